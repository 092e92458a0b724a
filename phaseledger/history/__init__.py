"""A run's history: time travel, forks, comparison, retention and resume tokens."""
