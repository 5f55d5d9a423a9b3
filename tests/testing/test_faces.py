"""The face renderer: deterministic, four distinct expressions, changes only inside the expression region."""

from __future__ import annotations

import numpy as np
import pytest

from animexpr.testing.faces import BROW_DROP, EXPRESSIONS, random_identity, render, render_png


def test_the_same_identity_and_expression_give_the_same_bytes() -> None:
    assert render_png(random_identity(7), "sad", 96) == render_png(random_identity(7), "sad", 96)
    assert render_png(random_identity(7), "sad", 96) != render_png(random_identity(8), "sad", 96)


@pytest.mark.parametrize("size", [64, 128])
def test_expressions_of_one_identity_differ_only_inside_its_region(size: int) -> None:
    for seed in range(25):
        faces = [render(random_identity(seed), expression, size) for expression in EXPRESSIONS]
        region = faces[0].region
        assert all(np.array_equal(face.region, region) for face in faces)
        assert 0.02 < region.mean() < 0.35  # the eyes, brows, mouth and cheeks: a part of the picture
        for a in faces:
            for b in faces:
                changed = np.abs(a.image.astype(int) - b.image.astype(int)).max(axis=2) > 0
                assert not (changed & ~region).any(), f"seed {seed}: pixels changed outside the region"
                if a is not b:
                    assert changed.sum() > size * size * 0.005, f"seed {seed}: two expressions look alike"


def test_identities_vary_outside_the_region() -> None:
    first, second = render(random_identity(1), "smile", 64), render(random_identity(2), "smile", 64)
    outside = ~(first.region | second.region)
    assert np.abs(first.image.astype(int) - second.image.astype(int))[outside].mean() > 20


def test_brows_slant_the_anime_way() -> None:
    """Angry: the inner end lower than the outer; sad: higher; surprised: both above a smile's."""
    angry_inner, angry_outer = BROW_DROP["angry"]
    sad_inner, sad_outer = BROW_DROP["sad"]
    assert angry_inner > angry_outer
    assert sad_inner < sad_outer
    assert max(BROW_DROP["surprised"]) < min(BROW_DROP["smile"])


def test_an_unknown_expression_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown expression"):
        render(random_identity(0), "bored")
