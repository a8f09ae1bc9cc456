"""The durable actor runtime and the queue's actors."""
