"""Training stages: each runs from a config and a run directory and returns its report entry."""
