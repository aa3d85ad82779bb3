"""Analytics: daily summary tables of payments, payouts, escrow deals and purchases, and the reads over them.

A beat job (analytics.tasks) rolls raw rows up into `DailyStatusSummary` and `DailyFailureReason` with one
GROUP BY per kind and day range; the dashboard and the staff API read only those tables (analytics.selectors).
"""
