"""The catalog rows a user rated (what /recommend leaves out), remembered per history."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from app.scoring_batch import UserQuery
from model.bundle import Catalog

EXCLUDED_CACHE = 10_000  # users whose rated catalog rows are remembered


class RatedRows:
    """An LRU of rated catalog rows per (user, history version)."""

    def __init__(self, catalog: Catalog, size: int = EXCLUDED_CACHE) -> None:
        self.catalog = catalog
        self.size = size
        self._excluded: OrderedDict[tuple[str | None, int], np.ndarray] = OrderedDict()

    def of(self, user: UserQuery) -> np.ndarray:
        """Catalog rows of the user's rated movies; remembered per (user, history version)
        when the history came from the store (any change bumps the version)."""
        key = (user.uid, user.version) if user.history_from_store else None
        rows = self._excluded.get(key) if key is not None else None
        if rows is None:
            catalog = self.catalog
            rows = np.array([r for r in map(catalog.row, user.rated or []) if r is not None],
                            dtype=np.int64)
            if key is not None:
                self._excluded[key] = rows
                while len(self._excluded) > self.size:
                    self._excluded.popitem(last=False)
        elif key is not None:
            self._excluded.move_to_end(key)
        return rows
