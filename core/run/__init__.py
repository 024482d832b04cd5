"""Run driving for the CLI: studies, noise measurement, doctor."""
