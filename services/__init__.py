"""What runs outside the request: senders, consumers, the outbox relay, and the local sinks."""
