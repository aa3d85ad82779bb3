"""Helpers of `manage.py demo` (monitoring/management/commands/demo.py): the lifecycles that give the dashboard
and its charts content on a fresh machine. Everything here goes through the apps' services and the provider
sandbox; nothing writes a money row itself.

- webhooks.py: an in-process receiver for the sandbox's webhooks while the demo seeds;
- payouts.py: a PayPal payout cycle, maker-checker approved, settled by the sandbox;
- wallets.py: Maya and GCash payments through the orchestrator, one falling back from GCash to Maya.
"""
