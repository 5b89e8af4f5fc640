"""Rollouts: versioned deploys with health gates, steps over instances and rollback."""
