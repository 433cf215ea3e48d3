"""promotion: stages on evidence (staging, production, rollback) and approvers' manual moves."""
