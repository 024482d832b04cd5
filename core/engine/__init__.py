"""The engine: scheduling, command handling, acceptance, the mechanism host."""
