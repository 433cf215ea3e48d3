"""`modelreg bench`: the registry's benchmark, against the running local stack.

Each phase is its own module (`pipeline`, `latency`, `lookup`, `large`, `replayrate`,
`resources`); `run` orders them, `report` prints the table and writes the JSON and the chart.
Services run as separate OS processes, as in production; the benchmark only publishes
events, reads events, and calls the HTTP API, except where a phase says otherwise (the
champion lookup seeds its 100k versions straight into the view tables).
"""
