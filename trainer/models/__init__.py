"""The model registry: one name -> an architecture's builder and its training recipe.

Each architecture lives in one module of this package holding `NAME`, `build(num_labels,
**options) -> keras.Model` (float32 [batch, 124, 129] |STFT| in, logits out) and
`RECIPE` (a `Recipe`). Adding one is a new module and one line in `REGISTRY`.

Importing this package also registers the custom Keras layers and loss, so a saved
`model.keras` loads with plain Keras::

    import keras
    import trainer.models  # noqa: F401  (registers LogMel, SpecMask, the loss)
    model = keras.models.load_model("JOB/model.keras")
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras

from trainer import training  # noqa: F401  (registers the loss saved models refer to)
from trainer.models import kws, tutorial
from trainer.models.recipe import Recipe


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A registry entry: how to build the model and how to train it."""
    build: Callable[..., keras.Model]
    recipe: Recipe


REGISTRY: dict[str, Architecture] = {
    tutorial.NAME: Architecture(tutorial.build, tutorial.RECIPE),
    kws.NAME: Architecture(kws.build, kws.RECIPE),
}
DEFAULT_MODEL = kws.NAME


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str) -> Architecture:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(names())}")
    return REGISTRY[name]


def get_recipe(name: str) -> Recipe:
    return get(name).recipe


def build_model(name: str, num_labels: int, **options) -> keras.Model:
    """Builds the architecture `name` with `num_labels` logits."""
    return get(name).build(num_labels, **options)


__all__ = ["Architecture", "DEFAULT_MODEL", "REGISTRY", "Recipe", "build_model", "get",
           "get_recipe", "names"]
