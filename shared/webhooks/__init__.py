"""Webhook subscriptions: their rules, their URLs' safety, their tables, shared by the webhooks
service that delivers them and the API and CLI that manage them."""
