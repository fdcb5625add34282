from array import array
from typing import Iterable, Optional

from fastgrad.engine import Value

class ParameterArray:
    values: tuple[Value, ...]
    def __init__(self, params: Iterable[Value]) -> None: ...
    def __len__(self) -> int: ...
    def zero_grad(self) -> None: ...
    def sgd_step(
        self, lr: float, momentum: float, dampening: float, weight_decay: float, nesterov: bool,
        momentum_buffer: Optional[array], buffer_started: bool,
    ) -> None: ...
    def adam_step(
        self, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
        decoupled_weight_decay: bool, step: int, exp_avg: array, exp_avg_sq: array,
    ) -> None: ...
