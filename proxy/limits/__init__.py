"""Per-caller budgets (submit rate, cost quota, polling, concurrency) and a global cost cap."""
