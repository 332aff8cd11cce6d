"""Building blocks that the preference oracles share.

Every oracle returns, for K responses y_1..y_K to one instruction x, the matrix
``P[i, j] = P(y_i preferred over y_j | x)`` of shape [K, K], and for N separate
pairs the vector ``P(a_n preferred over b_n | x_n)`` of shape [N] (``batch_preferences``).
The helpers here build those from per-response scores or from a function evaluated
on pairs of responses, check input lengths, and fingerprint model weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# A function of (instructions, first responses, second responses) that returns one value per pair, shape [N].
PairFunction = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]


def sigmoid(values: np.ndarray | float) -> np.ndarray:
    """Logistic function, computed without overflow for large ``|x|``."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(values, dtype=np.float64)))


# Input checks


def check_same_length(**sequences: Sequence[Any]) -> None:
    """Raise ValueError unless all sequences have the same length. The message names each by its keyword."""
    lengths = [len(values) for values in sequences.values()]
    if len(set(lengths)) <= 1:
        return
    names = list(sequences)
    raise ValueError(
        f"{', '.join(names[:-1])} and {names[-1]} must have the same length, got "
        f"{', '.join(str(length) for length in lengths[:-1])} and {lengths[-1]}"
    )


def check_group_count(instructions: Sequence[str], response_groups: Sequence[Sequence[str]]) -> None:
    """Raise ValueError unless there is one response group per instruction."""
    if len(instructions) != len(response_groups):
        raise ValueError(f"got {len(instructions)} instructions but {len(response_groups)} response groups")


# Matrices from per-response scores


def bradley_terry_matrix(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Return ``P[i, j] = sigmoid((s_i - s_j) / temperature)`` for scores of shape [K], shape [K, K]."""
    return sigmoid((scores[:, None] - scores[None, :]) / temperature)


def bradley_terry_preferences(
    scores_a: np.ndarray, scores_b: np.ndarray, temperature: float = 1.0
) -> np.ndarray:
    """Return ``sigmoid((a_n - b_n) / temperature)`` for two score vectors of shape [N], shape [N]."""
    return sigmoid((scores_a - scores_b) / temperature)


def complete_from_upper(matrix: np.ndarray) -> np.ndarray:
    """Copy the strict upper triangle of a [K, K] matrix and fill the rest from it.

    Below the diagonal ``P[j, i] = 1 - P[i, j]`` and the diagonal is 0.5, so
    ``P[i, j] + P[j, i] == 1`` up to one rounding. The input's lower triangle and
    diagonal are ignored.
    """
    upper = np.triu(matrix, k=1)
    result = upper + np.tril(1.0 - upper.T, k=-1)
    np.fill_diagonal(result, 0.5)
    return result


# Matrices from a function of response pairs


def _flatten_pairs(
    instructions: Sequence[str], response_groups: Sequence[Sequence[str]], *, ordered: bool
) -> tuple[list[str], list[str], list[str], list[tuple[int, int, int]]]:
    """List the response pairs of all groups as flat instruction, first and second lists.

    With ``ordered`` every pair i != j is listed, otherwise only i < j, in row-major order
    within each group. The last list contains the (group index, i, j) of each pair.
    """
    sources: list[str] = []
    firsts: list[str] = []
    seconds: list[str] = []
    slots: list[tuple[int, int, int]] = []
    for group_index, (instruction, responses) in enumerate(zip(instructions, response_groups, strict=True)):
        for i, first in enumerate(responses):
            for j, second in enumerate(responses):
                if j == i or (j < i and not ordered):
                    continue
                sources.append(instruction)
                firsts.append(first)
                seconds.append(second)
                slots.append((group_index, i, j))
    return sources, firsts, seconds, slots


def _scatter_pairs(
    response_groups: Sequence[Sequence[str]], slots: Sequence[tuple[int, int, int]], values: np.ndarray
) -> list[np.ndarray]:
    """Return one zero matrix [K, K] per group with ``values`` written at their (group, i, j) slots."""
    matrices = [np.zeros((len(responses), len(responses)), dtype=np.float64) for responses in response_groups]
    for (group_index, i, j), value in zip(slots, values, strict=True):
        matrices[group_index][i, j] = value
    return matrices


def ordered_pair_matrices(
    instructions: Sequence[str], response_groups: Sequence[Sequence[str]], pair_function: PairFunction
) -> list[np.ndarray]:
    """Return, per group, ``C[i, j] = pair_function(x, y_i, y_j)`` for all i != j and ``C[i, i] = 0``.

    The pairs of all groups go to ``pair_function`` in one call, which lets it batch them.
    The caller checks that there is one group per instruction.
    """
    sources, firsts, seconds, slots = _flatten_pairs(instructions, response_groups, ordered=True)
    return _scatter_pairs(response_groups, slots, pair_function(sources, firsts, seconds))


def preference_matrices_from_pairs(
    instructions: Sequence[str], response_groups: Sequence[Sequence[str]], batch_preferences: PairFunction
) -> list[np.ndarray]:
    """Return, per group, P from one call of ``batch_preferences`` on the pairs i < j.

    ``P[j, i] = 1 - P[i, j]`` and the diagonal is 0.5, so an oracle whose preferences
    are consistent in both orders needs only half of the pairs. The caller checks that
    there is one group per instruction.
    """
    sources, firsts, seconds, slots = _flatten_pairs(instructions, response_groups, ordered=False)
    upper = _scatter_pairs(response_groups, slots, batch_preferences(sources, firsts, seconds))
    return [complete_from_upper(matrix) for matrix in upper]


class GroupedPreferenceOracle:
    """Base class of oracles that compute the matrices of several instructions in one batch.

    Subclasses implement :meth:`preference_matrices`.
    """

    def preference_matrices(
        self, instructions: Sequence[str], response_groups: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        raise NotImplementedError

    def preference_matrix(self, instruction: str, responses: Sequence[str]) -> np.ndarray:
        """Return P[i, j] = P(responses[i] preferred over responses[j] | instruction), shape [K, K]."""
        return self.preference_matrices([instruction], [responses])[0]


# Identity


def vocabulary_sha256(tokenizer: Any) -> str:
    """Return the sha256 of a tokenizer's vocabulary, as JSON of its (token, id) pairs sorted by token."""
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def weights_fingerprint(settings: dict[str, Any], model: Any) -> str:
    """Return a sha256 over ``settings`` (as sorted JSON) and every tensor of the model's state dict.

    Each tensor contributes its name, dtype and shape and then its raw bytes, in the
    order of the sorted names, so the result changes with any weight.
    """
    import torch  # imported here so that the LLM and offline judges can use this module without torch

    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
