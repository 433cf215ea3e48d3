"""Pure decisions more than one part of the registry makes: a service acts on them, the API
and the CLI explain or preview them. Plain functions over plain data, no I/O."""
