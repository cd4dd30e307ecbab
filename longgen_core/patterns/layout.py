"""Block layouts: the tiles of the attention matrix a kernel must visit, as CSR and CSC.

Built by :meth:`longgen_core.patterns.Pattern.block_layout` from closed forms (cheap at 128K).
Each tile is TILE_EMPTY (skipped), TILE_PARTIAL (the token mask applies inside) or TILE_FULL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Tile classes in a block layout's dense view.
TILE_EMPTY, TILE_PARTIAL, TILE_FULL = 0, 1, 2


@dataclass
class BlockLayout:
    """Kept tiles of one pattern at length ``n`` and tile size ``block_size``.

    ``H_l`` below is the number of distinct head layouts: 1 when all heads share the pattern
    (kernels then use layout 0 for every head), else the number of heads.

    Attributes:
        row_ptr:  ``(H_l, nb + 1)`` int32 -- CSR: query tile ``i`` keeps key tiles
                  ``col_idx[h, row_ptr[h, i]:row_ptr[h, i + 1]]`` (ascending).
        col_idx:  ``(H_l, nnz_max)`` int32, padded with -1 after each head's ``nnz``.
        row_mask: ``(H_l, nnz_max)`` bool -- True where that tile needs the token mask inside
                  (diagonal, window edge, ragged end); False where it is fully kept.
        col_ptr, row_idx, col_mask: the same tiles as CSC (key tile -> query tiles), for dK/dV.
        nnz:      ``(H_l,)`` int64 -- kept tiles per head layout.
    """

    n: int
    block_size: int
    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    row_mask: torch.Tensor
    col_ptr: torch.Tensor
    row_idx: torch.Tensor
    col_mask: torch.Tensor
    nnz: torch.Tensor

    @property
    def num_blocks(self) -> int:
        return self.row_ptr.shape[1] - 1

    @property
    def num_layouts(self) -> int:
        return self.row_ptr.shape[0]

    @classmethod
    def from_classes(cls, classes: torch.Tensor, n: int, block_size: int) -> "BlockLayout":
        """Build CSR and CSC from a ``(H_l, nb, nb)`` tensor of tile classes."""
        kept = classes != TILE_EMPTY
        nnz = kept.flatten(1).sum(1)
        nnz_max = int(nnz.max())

        def compress(mat: torch.Tensor, cls_mat: torch.Tensor):
            # mat: (nb, nb) bool with rows = the compressed dimension
            counts = mat.sum(1)
            ptr = torch.zeros(mat.shape[0] + 1, dtype=torch.int32)
            ptr[1:] = torch.cumsum(counts, 0)
            rows, cols = mat.nonzero(as_tuple=True)  # row-major, so cols ascend within a row
            idx = torch.full((nnz_max,), -1, dtype=torch.int32)
            msk = torch.zeros(nnz_max, dtype=torch.bool)
            idx[: cols.numel()] = cols.to(torch.int32)
            msk[: cols.numel()] = cls_mat[rows, cols] == TILE_PARTIAL
            return ptr, idx, msk

        csr = [compress(kept[h], classes[h]) for h in range(classes.shape[0])]
        csc = [compress(kept[h].T, classes[h].T) for h in range(classes.shape[0])]
        return cls(
            n=n,
            block_size=block_size,
            row_ptr=torch.stack([c[0] for c in csr]),
            col_idx=torch.stack([c[1] for c in csr]),
            row_mask=torch.stack([c[2] for c in csr]),
            col_ptr=torch.stack([c[0] for c in csc]),
            row_idx=torch.stack([c[1] for c in csc]),
            col_mask=torch.stack([c[2] for c in csc]),
            nnz=nnz,
        )

    def to_dense(self, head: int = 0) -> torch.Tensor:
        """``(nb, nb)`` int8 of TILE_EMPTY / TILE_PARTIAL / TILE_FULL, rebuilt from the CSR."""
        nb = self.num_blocks
        out = torch.zeros(nb, nb, dtype=torch.int8)
        ptr, idx, msk = self.row_ptr[head], self.col_idx[head], self.row_mask[head]
        rows = torch.repeat_interleave(torch.arange(nb), (ptr[1:] - ptr[:-1]).long())
        count = int(ptr[-1])
        out[rows, idx[:count].long()] = torch.where(msk[:count], TILE_PARTIAL, TILE_FULL).to(torch.int8)
        return out

    def tile_density(self) -> float:
        """Kept tiles over the tiles of the causal lower triangle, averaged over head layouts."""
        nb = self.num_blocks
        return float(self.nnz.double().mean()) / (nb * (nb + 1) / 2)

    def to(self, device) -> "BlockLayout":
        """Copy of the layout with every index tensor on ``device``."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return BlockLayout(**moved)
