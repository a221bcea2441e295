"""A test-only model whose training raises."""

from cog import Input, Path


def train(learning_rate: float = Input(description="Learning rate", default=0.1)) -> Path:
    print("starting the training")
    raise ValueError(f"learning rate too high: {learning_rate}")
