"""Tests of ddpm_lib.plots: the image grid (shape, range, where each tile goes) and that the figure
helpers draw with the non-interactive Agg backend and return their axes.

Each test's docstring names the wrong implementation it catches.
"""
import matplotlib

matplotlib.use("Agg")                          # before pyplot is imported by ddpm_lib.plots

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from ddpm_lib import plots  # noqa: E402


# matplotlib given a torch tensor warns "__array__ implementation doesn't accept a copy keyword";
# the helpers hand it numpy arrays, and these tests turn that warning into an error.
NO_TENSOR_TO_MATPLOTLIB = pytest.mark.filterwarnings("error:__array__ implementation:DeprecationWarning")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def tile(grid, i, ncol, H, W, pad):
    """The (H, W, C) block of image i in a grid laid out row by row with ``pad`` pixels around tiles."""
    r, c = divmod(i, ncol)
    top, left = pad + r * (H + pad), pad + c * (W + pad)
    return grid[top:top + H, left:left + W]


def test_image_grid_shape_and_range():
    """B = 5 images of 4×6, nrow = 3, pad = 2 → 2 rows × 3 columns: (2·6 + 2, 3·8 + 2, C) in [0, 1];
    values outside [−1, 1] are clamped. Catches: a (C, H, W) result (imshow needs channels last),
    rows and columns swapped, a grid that drops the last partial row, no clamp."""
    x = 3 * torch.randn(5, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    grid = plots.image_grid(x, nrow=3, pad=2)
    assert grid.shape == (2 * (4 + 2) + 2, 3 * (6 + 2) + 2, 3)
    assert grid.min() >= 0.0 and grid.max() <= 1.0
    assert grid.min() == 0.0 and grid.max() == 1.0            # clamped values reach both ends
    assert plots.image_grid(x[:2], nrow=8).shape == (4 + 4, 2 * (6 + 2) + 2, 3)   # fewer images than nrow


def test_image_grid_places_each_tile():
    """Image i goes to row i // nrow, column i % nrow, mapped from [−1, 1] to [0, 1], with the colour
    channels kept in order; one white image among black ones lands exactly in its tile, padding is white.
    Catches: column-major placement, tiles off by the padding, channels permuted, no (x + 1)/2."""
    B, C, H, W, pad, nrow = 7, 3, 3, 5, 1, 3
    x = -torch.ones(B, C, H, W)
    x[4] = 1.0                                                   # the one white image: row 1, column 1
    grid = plots.image_grid(x, nrow=nrow, pad=pad)
    for i in range(B):
        want = 1.0 if i == 4 else 0.0
        assert (tile(grid, i, nrow, H, W, pad) == want).all(), i
    assert int((grid == 0.0).sum()) == (B - 1) * H * W * C        # nothing else is black
    # distinct grey levels per image and per channel: every tile holds exactly its own image
    levels = torch.linspace(-1, 1, B * C).reshape(B, C, 1, 1).expand(B, C, H, W)
    grid = plots.image_grid(levels, nrow=nrow, pad=pad)
    for i in range(B):
        torch.testing.assert_close(tile(grid, i, nrow, H, W, pad), ((levels[i] + 1) / 2).permute(1, 2, 0))


@NO_TENSOR_TO_MATPLOTLIB
def test_show_images_draws_grid_and_returns_axes():
    """show_images draws the grid (single channel squeezed to 2-D, grey, 0..1) on the given axes and
    returns them, with the title set. Catches: an (H, W, 1) array passed to imshow (an error),
    a new figure instead of the given axes, the title ignored."""
    x = torch.linspace(-1, 1, 4 * 8 * 8).reshape(4, 1, 8, 8)
    fig, ax = plt.subplots()
    out = plots.show_images(x, nrow=2, ax=ax, title="samples")
    assert out is ax and isinstance(out, Axes)
    image = ax.images[0]
    assert image.get_array().shape == (2 * 10 + 2, 2 * 10 + 2)
    torch.testing.assert_close(torch.as_tensor(image.get_array()), plots.image_grid(x, 2)[..., 0])
    assert image.get_clim() == (0, 1)
    assert ax.get_title() == "samples"
    fig.canvas.draw()                                            # renders with Agg without error
    plt.figure()
    rgb = plots.show_images(torch.zeros(2, 3, 4, 4))             # no ax: the current (new) axes
    assert isinstance(rgb, Axes) and rgb is not ax and rgb.images[0].get_array().shape == (8, 14, 3)


@NO_TENSOR_TO_MATPLOTLIB
def test_scatter2d_returns_axes_with_points():
    """scatter2d puts all N points on the axes at their coordinates, equal aspect and the given limits.
    Catches: x and y swapped, limits not applied, the axes not returned."""
    x = torch.tensor([[0.5, -1.0], [2.0, 0.25], [-1.5, 1.0]], dtype=torch.float64)
    fig, ax = plt.subplots()
    out = plots.scatter2d(x, ax=ax, c=torch.tensor([0, 1, 1]), title="two moons", lim=2.5)
    assert out is ax
    offsets = ax.collections[0].get_offsets()
    torch.testing.assert_close(torch.as_tensor(offsets.data, dtype=torch.float64), x)
    assert ax.get_xlim() == (-2.5, 2.5) and ax.get_ylim() == (-2.5, 2.5)
    assert ax.get_aspect() == 1.0 and ax.get_title() == "two moons"
    fig.canvas.draw()
    assert isinstance(plots.scatter2d(x, lim=None), Axes)


def test_plain_log_ticks_labels_one_two_three_five_per_decade_inside_the_limits():
    """On a log axis from 25 to 260 the ticks are 30, 50, 100, 200, labelled as plain numbers, with the minor
    ticks unlabelled; from 24 to 110 every integer mantissa; from 21 to 55 halves as well; given values, only those inside the limits are used; a linear
    axis is refused. Catches: ticks outside the limits, labels left as powers of ten (matplotlib writes 3 × 10¹
    with mathtext), minor labels left on."""
    fig, ax = plt.subplots()
    ax.plot([1, 10_000], [25, 260])
    ax.set(xscale="log", yscale="log", ylim=(25, 260))
    assert plots.plain_log_ticks(ax.yaxis) is ax.yaxis
    fig.canvas.draw()
    assert list(ax.get_yticks()) == [30, 50, 100, 200]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["30", "50", "100", "200"]
    assert all(t.get_text() == "" for t in ax.yaxis.get_minorticklabels())
    ax.set_ylim(24, 110)                                   # less than a decade: every integer mantissa
    plots.plain_log_ticks(ax.yaxis)
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["30", "40", "50", "60", "70", "80", "90", "100"]
    ax.set_ylim(21, 55)                                    # a narrow axis: halves too, not just 30, 40, 50
    plots.plain_log_ticks(ax.yaxis)
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["25", "30", "35", "40", "45", "50"]
    ax.set_xlim(5, 200)
    plots.plain_log_ticks(ax.xaxis, values=[1, 10, 20, 50, 100, 1000])
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "20", "50", "100"]
    ax.set_yscale("linear")
    with pytest.raises(ValueError, match="log-scaled"):
        plots.plain_log_ticks(ax.yaxis)


def test_plain_log_ticks_keep_ticks_at_limits_that_are_one_two_five_numbers():
    """From 10 to 1000 the ticks run 10, 20, 30, 50, …, 500, 1000: both limits are ticks themselves.
    Catches: strict inequalities at the limits (10 and 1000 dropped), the top decade left out of the range."""
    fig, ax = plt.subplots()
    ax.plot([10, 1000], [1, 2])
    ax.set_xscale("log")
    ax.set_xlim(10, 1000)
    plots.plain_log_ticks(ax.xaxis)
    assert list(ax.get_xticks()) == [10, 20, 30, 50, 100, 200, 300, 500, 1000]


def test_show_images_fixes_the_colour_limits_for_a_flat_image():
    """An all-zeros image is mid-grey (0.5 in [0, 1]) and must be drawn so: the colour limits stay (0, 1)
    however flat the data. Catches: imshow left to autoscale (limits (0.5, 1) from the grey tile and the white
    padding, so the grey would render black)."""
    fig, ax = plt.subplots()
    plots.show_images(torch.zeros(1, 1, 4, 4), ax=ax)
    assert ax.images[0].get_clim() == (0, 1)


def test_save_scatter_draws_the_points_where_they_are_on_its_own_figure(tmp_path):
    """Two clusters, at (−1, −1) and (1, 1): in the PNG the left cluster's dots lie lower than the right
    one's; a horizontal segment y = 0, −1 <= x <= 1, is drawn wide and flat. Catches: a blank picture,
    flipped or swapped axes, and a pyplot figure left open (a notebook's current figure would gain the points)."""
    import numpy as np
    from PIL import Image

    def blue_dots(x, name):
        plots.save_scatter(x, tmp_path / name, title=name)
        rgb = np.asarray(Image.open(tmp_path / name).convert("RGB")).astype(int)
        return np.nonzero(rgb[..., 2] - rgb[..., 0] > 60)             # rows, columns of tab:blue pixels

    g = torch.Generator().manual_seed(0)
    rows, cols = blue_dots(torch.cat([torch.randn(200, 2, generator=g) * 0.05 - 1,
                                      torch.randn(200, 2, generator=g) * 0.05 + 1]), "clusters.png")
    assert plt.get_fignums() == []
    middle = (cols.min() + cols.max()) / 2
    left, right = cols < middle, cols > middle
    assert left.sum() > 100 and right.sum() > 100
    assert rows[left].mean() > rows[right].mean() + 50                    # image rows grow downwards
    rows, cols = blue_dots(torch.stack([torch.linspace(-1, 1, 200), torch.zeros(200)], dim=1), "segment.png")
    assert cols.max() - cols.min() > 10 * (rows.max() - rows.min() + 1)


def test_save_scatter_draws_every_run_on_one_equal_scaled_square_and_counts_the_points_outside(tmp_path, monkeypatch):
    """Points at (±2, 0) and (0, ±2): 4 units take as many pixels across as up; a collapsed sampler (every
    point near (0.5, 0.5)) stays a dot, not a blob filling the axes; two points beyond ±3 are counted in the
    title. Catches: axes fitted to the points (a collapse looks healthy), unequal scales, points lost silently."""
    import numpy as np
    from PIL import Image
    titles = []
    real = plots.scatter2d
    monkeypatch.setattr(plots, "scatter2d", lambda x, **kw: titles.append(kw["title"]) or real(x, **kw))

    def blue_dots(x, name):
        plots.save_scatter(x, tmp_path / name, title="t")
        rgb = np.asarray(Image.open(tmp_path / name).convert("RGB")).astype(int)
        return np.nonzero(rgb[..., 2] - rgb[..., 0] > 60)

    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]]).repeat_interleave(50, dim=0)
    rows, cols = blue_dots(centres + 0.02 * torch.randn(200, 2, generator=g), "cross.png")
    across = cols.max() - cols.min()
    up = rows.max() - rows.min()
    assert abs(across - up) <= 0.03 * across and titles[-1] == "t"
    rows, cols = blue_dots(0.5 + 1e-3 * torch.randn(1000, 2, generator=g), "collapsed.png")
    assert cols.max() - cols.min() < 0.05 * across and rows.max() - rows.min() < 0.05 * across
    blue_dots(torch.tensor([[0.0, 0.0], [3.5, 0.0], [0.0, -4.0], [2.9, 2.9]]), "outside.png")
    assert titles[-1] == "t (2 outside ±3)"


@NO_TENSOR_TO_MATPLOTLIB
def test_images_that_still_require_grad_are_drawn_without_their_graph():
    """A batch straight from a network (requires_grad, not detached by the caller) is tiled into a grid
    that records no gradient, and show_images draws it with the values of the detached batch. Catches: the
    .detach() left out (the grid joins the autograd graph and show_images' .numpy() raises)."""
    w = torch.tensor(0.5, requires_grad=True)
    x = w * torch.linspace(-1, 1, 2 * 1 * 4 * 4).reshape(2, 1, 4, 4)
    grid = plots.image_grid(x, nrow=2)
    assert not grid.requires_grad and grid.grad_fn is None
    fig, ax = plt.subplots()
    plots.show_images(x, nrow=2, ax=ax)
    torch.testing.assert_close(torch.as_tensor(ax.images[0].get_array()), plots.image_grid(x.detach(), 2)[..., 0])


def test_show_images_draws_in_grey_with_the_axes_off():
    """One-channel images are drawn with the grey colour map (0 black, 1 white), with no ticks or frame.
    Catches: matplotlib's default colour map left on (digits in purple and yellow), the axes left on."""
    fig, ax = plt.subplots()
    plots.show_images(torch.zeros(2, 1, 4, 4), ax=ax)
    assert ax.images[0].get_cmap().name == "gray" and not ax.axison


@NO_TENSOR_TO_MATPLOTLIB
def test_scatter2d_passes_the_colour_map_size_and_other_options_to_matplotlib():
    """A continuous colour with cmap="viridis" goes through viridis, class labels without cmap through tab10;
    the marker size (default 2) and further keywords (alpha) reach the points. Catches: cmap dropped (labels
    in matplotlib's default map), s or the extra keywords ignored."""
    x = torch.zeros(3, 2)
    fig, ax = plt.subplots()
    plots.scatter2d(x, ax=ax, c=torch.tensor([0.1, 0.5, 0.9]), cmap="viridis", s=7.0, alpha=0.25)
    plots.scatter2d(x, ax=ax, c=torch.tensor([0, 1, 2]))
    quantity, labels = ax.collections
    assert quantity.get_cmap().name == "viridis" and list(quantity.get_sizes()) == [7.0]
    assert quantity.get_alpha() == 0.25
    assert labels.get_cmap().name == "tab10" and list(labels.get_sizes()) == [2.0]


def test_save_scatter_uses_its_lim_dpi_and_marker_sizes_and_needs_no_title(tmp_path, monkeypatch):
    """save_scatter(lim=5, dpi=50) draws on [−5, 5]² into a 200 × 200 PNG (a 4-inch figure) and counts only
    the point beyond ±5 (points at exactly ±5 lie on the square's edge); up to 1,000 points are drawn at
    size 4, more at size 1; no title is fine. Catches: lim or dpi not passed on, >= counting the edge as
    outside, the two marker sizes swapped or off by one, None + note (a TypeError without a title)."""
    from PIL import Image
    calls = []
    real = plots.scatter2d
    monkeypatch.setattr(plots, "scatter2d", lambda x, **kw: calls.append(kw) or real(x, **kw))
    x = torch.tensor([[5.0, 0.0], [0.0, -5.0], [6.0, 0.0], [1.0, 1.0]])
    plots.save_scatter(x, tmp_path / "a.png", lim=5, dpi=50)
    ax = calls[-1]["ax"]
    assert ax.get_xlim() == (-5, 5) and ax.get_ylim() == (-5, 5)
    assert calls[-1]["title"] == "(1 outside ±5)" and calls[-1]["s"] == 4
    assert Image.open(tmp_path / "a.png").size == (200, 200)
    plots.save_scatter(torch.zeros(1000, 2), tmp_path / "b.png")
    assert calls[-1]["s"] == 4 and calls[-1]["title"] == ""
    plots.save_scatter(torch.zeros(1001, 2), tmp_path / "c.png")
    assert calls[-1]["s"] == 1


def test_plain_log_ticks_on_an_inverted_axis():
    """A log axis drawn upside down (from 260 down to 25) gets the ticks of the upright one: 30, 50, 100,
    200. Catches: the view interval taken as (lo, hi) without sorting (no value lies in 260..25: no ticks)."""
    fig, ax = plt.subplots()
    ax.plot([1, 10], [25, 260])
    ax.set_yscale("log")
    ax.set_ylim(260, 25)
    plots.plain_log_ticks(ax.yaxis)
    fig.canvas.draw()
    assert list(ax.get_yticks()) == [30, 50, 100, 200]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["30", "50", "100", "200"]


def test_image_grid_takes_one_image_and_refuses_pixels_and_other_shapes():
    """``plots.show_images(x0[0])`` (one image) and ``show_images(x0[0, 0])`` (its one channel) are a grid of one;
    uint8 pixels 0..255 would be clamped to a white square, and a 5-D tensor is not images. Catches: "not enough
    values to unpack" for one image, a white grid for pixels without a word."""
    x = torch.rand(1, 1, 6, 5) * 2 - 1
    expected = plots.image_grid(x)
    torch.testing.assert_close(plots.image_grid(x[0]), expected, rtol=0, atol=0)
    torch.testing.assert_close(plots.image_grid(x[0, 0]), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"images are torch.uint8: .* dl.to_model_range"):
        plots.image_grid(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"expected images \(B, C, H, W\) with 1 or 3 channels, or one image, got "
                                         r"\(2, 1, 1, 4, 4\)"):
        plots.image_grid(torch.zeros(2, 1, 1, 4, 4))
