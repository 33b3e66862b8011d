"""executor.fold: results combined in item order whatever order they finish in, none kept beyond that."""
from __future__ import annotations

from onnxprune.executor import InProcess, fold


class Reversed:
    """An executor whose items finish last-first (as Ray tasks may), keeping no results when asked not to."""

    name = "reversed"

    def __init__(self) -> None:
        self.kept = None

    def map(self, work, shared, items, *, setup=None, names=None, on_done=None, keep=True):
        context = shared if setup is None else setup(shared)
        results = [work(context, item) for item in items]
        self.kept = keep
        for k in reversed(range(len(results))):
            on_done(k, results[k])
        return results if keep else []


def test_fold_combines_in_item_order_when_items_finish_out_of_order():
    executor = Reversed()
    seen = []
    total = fold(executor, lambda base, item: [base + item], 10, range(5), lambda a, b: a + b,
                 on_done=lambda k, r: seen.append(k))
    assert total == [10, 11, 12, 13, 14]  # list concatenation: the order is visible
    assert seen == [4, 3, 2, 1, 0] and executor.kept is False


def test_fold_in_process_and_empty():
    assert fold(InProcess(), lambda _, item: item, None, ["a", "b", "c"], lambda a, b: a + b) == "abc"
    assert fold(InProcess(), lambda _, item: item, None, [], lambda a, b: a + b) is None
