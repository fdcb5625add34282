from typing import Literal, Sequence, SupportsFloat, SupportsIndex, Union, overload

from fastgrad.engine import Value

_Seed = Union[Value, SupportsFloat, SupportsIndex, None]

@overload
def grad(
    outputs: Union[Value, Sequence[Value]],
    inputs: Union[Value, Sequence[Value]],
    *,
    grad_outputs: Union[_Seed, Sequence[_Seed]] = ...,
    create_graph: Literal[False] = ...,
) -> list[float]: ...
@overload
def grad(
    outputs: Union[Value, Sequence[Value]],
    inputs: Union[Value, Sequence[Value]],
    *,
    grad_outputs: Union[_Seed, Sequence[_Seed]] = ...,
    create_graph: Literal[True],
) -> list[Value]: ...
