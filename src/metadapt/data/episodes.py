"""N-way K-shot episodes of image classes (the MAML paper's Omniglot setting, Finn et al. 2017, Sec. 5.2).

An episode draws ``N`` distinct classes and, of each, ``K + Q`` distinct
drawings: ``K`` make the support set the inner loop adapts on, ``Q`` the query
set the outer loss scores. Labels ``0..N-1`` go to the classes in the random
order they were drawn, so a label means nothing across episodes. As in the
MAML code (after Santoro et al. 2016), a rotation by a multiple of 90 degrees
makes a new class: with ``rotations`` class ``c * 4 + r`` is class ``c``
turned ``r`` quarter turns, and an episode may hold two rotations of one
character as two classes.

Sampling is tensor indexing only: one ``topk`` of random keys per meta-batch
picks the classes, another the drawings, and a rotation is a gather of pixels
through a precomputed permutation.
"""

from __future__ import annotations

import torch

from metadapt.data.omniglot import ImageClasses
from metadapt.types import TaskBatch


class NWayKShot:
    """Sampler of ``N``-way ``K``-shot episodes from one set of classes.

    Meta-training and test episodes come from different ``ImageClasses``
    (Omniglot's background and evaluation alphabets), one sampler each; a
    sampler's ``split`` argument is accepted for the ``TaskSampler`` protocol
    and ignored.

    Args:
        classes: the classes (``C x D x H x W`` uint8, ink high).
        n_way: ``N``, classes per episode.
        k_shot: ``K``, support drawings per class.
        query: ``Q``, query drawings per class (distinct from the support ones).
        rotations: quarter turns make new classes (``4 C`` classes; needs square images).
        device: where the images live and the episodes are made.
    """

    def __init__(self, classes: ImageClasses, n_way: int, k_shot: int, query: int, rotations: bool = True,
                 device: torch.device | str = "cpu") -> None:
        c, d, h, w = classes.images.shape
        self.num_classes = 4 * c if rotations else c
        if not 1 <= n_way <= self.num_classes:
            raise ValueError(f"n_way must be in [1, {self.num_classes}] (the classes there are), got {n_way}")
        if k_shot < 1 or query < 1 or k_shot + query > d:
            raise ValueError(f"k_shot and query must be >= 1 with k_shot + query <= {d} drawings per class, "
                             f"got {k_shot} and {query}")
        if rotations and h != w:
            raise ValueError(f"rotations need square images, got {h} x {w}")
        self.n_way, self.k_shot, self.query, self.rotations = int(n_way), int(k_shot), int(query), rotations
        self.device = torch.device(device)
        self.shape = (h, w)
        self.images = classes.images.to(self.device).reshape(c, d, h * w)
        # perms[r][p]: the pixel that lands on p when the image turns r quarter turns (rot90 of the index grid).
        grid = torch.arange(h * w).reshape(h, w)
        turns = range(4) if rotations else range(1)
        self.perms = torch.stack([torch.rot90(grid, r).reshape(-1) for r in turns]).to(self.device)

    def sample(self, num_tasks: int, generator: torch.Generator, split: str = "train") -> TaskBatch:
        """``num_tasks`` episodes.

        Returns:
            ``support = (images B x NK x 1 x H x W float in [0, 1], labels B x NK int64)``,
            ``query = (B x NQ x 1 x H x W, B x NQ)``, both ordered by label
            (label ``i``'s drawings at ``i * K .. i * K + K - 1``), and
            ``info = {"classes": B x N}``, the class of each label (``c * 4 + r`` with rotations).
        """
        b, n, k, q = int(num_tasks), self.n_way, self.k_shot, self.query
        m = k + q
        d, hw = self.images.shape[1:]
        gdev = generator.device
        # topk of uniform keys: a uniformly random subset, in random order (distinct classes, distinct drawings).
        cls = torch.rand(b, self.num_classes, generator=generator, device=gdev).topk(n, dim=1).indices
        draw = torch.rand(b, n, d, generator=generator, device=gdev).topk(m, dim=2).indices
        cls_dev, draw = cls.to(self.device), draw.to(self.device)
        base, turn = (cls_dev // 4, cls_dev % 4) if self.rotations else (cls_dev, torch.zeros_like(cls_dev))
        pixels = self.images[base.unsqueeze(-1), draw]                        # B x N x M x HW
        perm = self.perms[turn].unsqueeze(2).expand(b, n, m, hw)              # B x N x M x HW
        x = pixels.gather(-1, perm).to(torch.float32).div_(255.0).reshape(b, n, m, 1, *self.shape)
        labels = torch.arange(n, device=self.device)

        def part(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
            size = hi - lo
            return (x[:, :, lo:hi].reshape(b, n * size, 1, *self.shape),
                    labels.repeat_interleave(size).expand(b, n * size).contiguous())

        return TaskBatch(support=part(0, k), query=part(k, m), info={"classes": cls})


def nearest_neighbour_accuracy(tasks: TaskBatch) -> torch.Tensor:
    """Accuracy of 1-nearest-neighbour (L2 in pixel space) from each query image to the support images: ``B``.

    The floor a meta-learner has to beat; it needs no training.
    """
    xs, ys = tasks.support
    xq, yq = tasks.query
    b = xs.shape[0]
    dist = torch.cdist(xq.reshape(b, xq.shape[1], -1).double(), xs.reshape(b, xs.shape[1], -1).double(),
                       compute_mode="donot_use_mm_for_euclid_dist")       # B x NQ x NK, exact
    pred = ys.gather(1, dist.argmin(dim=2))
    return (pred == yq).float().mean(dim=1)
