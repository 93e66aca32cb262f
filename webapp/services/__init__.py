"""Use cases, the unit of work, and the handlers of domain messages."""
