"""What every map kind shares: the registry, what it needs of a method, and the gradient engine.

A map kind turns a classifier's activations into raw class maps. :class:`MapKind` is the
interface; :class:`GradientMapKind` owns the work of the kinds that weight a backbone layer's
activations by their gradients (pytorch-grad-cam's ``BaseCAM``), so such a kind only says how it
weights them (one hook, :meth:`GradientMapKind.weights`).

Gradient maps are computed for all (image, present class) pairs from a single forward pass: the
trunk up to the layer runs without autograd, its activation becomes a leaf, and only the tail
(layer -> logits) is differentiated, once per "class slot" (slot p holds the p-th present class
of every image) on the same retained graph.
"""

from __future__ import annotations

from typing import ClassVar, Iterator, Protocol

import torch
from torch import nn

from wsss.errors import ConfigError
from wsss.models.backbones import STAGES
from wsss.models.classifier import unwrap
from wsss.registry import Registry


class MapSource(Protocol):
    """What map extraction needs of the method that trained the model
    (``wsss.methods.base.Method`` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def default_map_kind(self) -> str: ...

    @property
    def map_layer(self) -> str: ...

    @property
    def supported_map_kinds(self) -> tuple[str, ...]: ...

    def class_maps(self, model: nn.Module, images: torch.Tensor,
                   labels: torch.Tensor | None = None) -> torch.Tensor: ...


class MapKind:
    """One way to compute raw class maps.

    ``layers``: the backbone stages whose activations the kind weights (empty: it uses the
    method's own class maps and no layer). A kind with layers needs the model to follow the
    backbone contract (``model.backbone`` with ``forward_until`` / ``forward_from`` a stage,
    ``model.maps_from_features``); methods whose models do not (``Method.layer_maps``) do not
    offer it.
    """

    name: ClassVar[str] = ""
    layers: ClassVar[tuple[str, ...]] = ()

    def raw_maps(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layer: str,
                 source: MapSource | None = None) -> torch.Tensor:
        """Raw (un-normalised) maps [B, C, h, w] for images [B, 3, H, W] and multi-hot labels
        [B, C], with the model in eval mode; classes with label <= 0.5 may get zero maps.
        ``layer``: the stage a kind with ``layers`` weights; ``source``: the method, for a kind
        without (its class maps)."""
        raise NotImplementedError


MAP_KINDS: Registry[type[MapKind]] = Registry("map kind")
register_map_kind = MAP_KINDS.register


def map_kind_for(source: MapSource, kind: str | None = None,
                 layer: str | None = None) -> tuple[MapKind, str]:
    """The map kind ``kind`` (None: the method's ``default_map_kind``) and the layer it weights
    (None: the method's ``map_layer``), checked against ``source``'s method.

    Raises:
        ConfigError: an unknown kind (the message lists the registered ones), a kind the
            method does not give, or a layer the kind cannot weight.
    """
    name = kind or source.default_map_kind
    cls = MAP_KINDS.lookup(name)
    if name not in source.supported_map_kinds:
        raise ConfigError(f"method '{source.name}' gives {', '.join(source.supported_map_kinds)}"
                          f" maps only, not {name}")
    layer = layer or source.map_layer
    if cls.layers and layer not in cls.layers:
        raise ConfigError(f"map kind '{name}' cannot weight layer '{layer}'; choose one of: "
                          f"{', '.join(cls.layers)}")
    return cls(), layer


class GradientMapKind(MapKind):
    """A kind that weights the activations A [B, K, h, w] of a backbone stage by a function of
    their gradients G = d logit_c / d A: map_c = relu(sum_k (weights(A, G) * A)_k).

    Backpropagation starts at the logits and stops at the layer: nothing before it is
    differentiated and no parameter gradient is computed. The backward of each class slot is
    summed over the batch, so the model must not mix images (eval-mode batch norm).
    """

    layers = STAGES

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """The hook: weights [B, K, 1, 1] (one per channel) or [B, K, h, w] (one per
        activation) from activations and gradients [B, K, h, w] of one class per image."""
        raise NotImplementedError

    def raw_maps(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layer: str,
                 source: MapSource | None = None) -> torch.Tensor:
        """Maps [B, C, h', w'] at the resolution of ``layer``, non-negative; zero for the
        classes with label <= 0.5. Needs autograd (not under ``torch.inference_mode``)."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError(f"{self.name} maps need autograd; compute them outside "
                               f"torch.inference_mode()")
        net = unwrap(model)
        with torch.no_grad():
            acts = net.backbone.forward_until(layer, images)
        out = acts.new_zeros((acts.shape[0], labels.shape[1], *acts.shape[2:]))
        classes, valid = class_slots(labels.to(acts.device) > 0.5)
        if classes.shape[1] == 0:
            return out
        leaf = acts.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = net.maps_from_features(net.backbone.forward_from(layer, leaf))
            logits = logits.mean(dim=(2, 3))
            for slot, grads in enumerate(slot_gradients(logits, leaf, classes, valid)):
                maps = torch.relu((self.weights(acts, grads) * acts).sum(dim=1))
                rows = valid[:, slot].nonzero(as_tuple=True)[0]
                out[rows, classes[rows, slot]] = maps[rows]
        return out


def class_slots(present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Present classes of each image packed into slots.

    Args:
        present: bool [B, C].

    Returns:
        classes long [B, P] (class of slot p of image b) and valid bool [B, P], where P is the
        largest number of present classes of any image.
    """
    num_slots = int(present.sum(dim=1).max().item()) if present.numel() else 0
    order = torch.argsort(present.to(torch.int8), dim=1, descending=True, stable=True)
    classes = order[:, :num_slots]
    return classes, present.gather(1, classes)


def slot_gradients(logits: torch.Tensor, leaf: torch.Tensor, classes: torch.Tensor,
                   valid: torch.Tensor) -> Iterator[torch.Tensor]:
    """d logit[b, classes[b, p]] / d leaf[b] [B, K, h, w] for each slot p in turn (zero for
    invalid slots).

    One backward pass of the tail per slot, reusing the same graph (no forward is re-run); only
    the gradient with respect to ``leaf`` is computed (no parameter gradients).

    Args:
        logits: [B, C], differentiable function of ``leaf``.
        leaf: activation [B, K, h, w] requiring grad.
        classes, valid: [B, P] slots from :func:`class_slots`.
    """
    num_slots = classes.shape[1]
    for slot in range(num_slots):
        one_hot = torch.zeros_like(logits)
        one_hot.scatter_(1, classes[:, slot:slot + 1], valid[:, slot:slot + 1].to(logits.dtype))
        (grads,) = torch.autograd.grad(logits, leaf, grad_outputs=one_hot,
                                       retain_graph=slot < num_slots - 1)
        yield grads
