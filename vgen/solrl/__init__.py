"""Sol-RL: candidate selection, advantages and policy losses (the building blocks of the RL loop)."""
