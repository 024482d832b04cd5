"""Services the levels and the engine use: the LLM client, training runs, executors, the training script as data."""
