"""The classifier network and the state inference needs (params, genes, labels, card).

Everything loads on first use: :class:`GinsengModelState` and the model file functions
import no jax; the network does.
"""

from .._lazy import lazy_attributes

__all__ = ["GinsengClassifier", "GinsengModelState", "load_model", "save_model"]

__getattr__, __dir__ = lazy_attributes(
    __name__,
    globals(),
    {
        "GinsengClassifier": ".network:GinsengClassifier",
        "GinsengModelState": ".state:GinsengModelState",
        "load_model": ".file:load_model",
        "save_model": ".file:save_model",
    },
)
