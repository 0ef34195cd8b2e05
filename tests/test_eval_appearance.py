"""Appearance consistency: per-colour foreground mass along videos (hgan.evaluate.appearance)."""
import numpy as np
import pytest

from hgan.data import open_h5
from hgan.data.render import BACKGROUND, palette, render
from hgan.evaluate import appearance


def _disc_video(radius, color, num_colors, frames=3, res=32):
    """One still disc at the centre of the canvas (-1, 1), as the data renderer draws it."""
    pos = np.zeros((1, frames, 1, 2))
    return render(pos, np.array([[radius]]), np.array([[color]]), num_colors, (-1.0, 1.0), res)


def test_color_mass_is_the_disc_area():
    # Pixel centres are linspace(0, 1, R) over the canvas width 2: a world radius r covers
    # r / 2 * (R - 1) pixels, and the soft disc's mass is its area.
    v = _disc_video(0.25, color=1, num_colors=3)
    mass = appearance.color_mass(v, 3)
    area = np.pi * (0.25 / 2 * 31) ** 2
    assert mass.shape == (1, 3, 3)
    np.testing.assert_allclose(mass[0, :, 1], area, rtol=0.08)
    assert mass[0, :, [0, 2]].max() < 0.02 * area  # the other colours see nothing


def test_object_mass_is_the_median_disc_area():
    # Three videos, one disc each of a known radius, in colour 0 of 2: colour 1 is absent
    # from every video and must not count as an object of mass 0.
    radii = (0.15, 0.25, 0.35)
    videos = np.concatenate([_disc_video(r, color=0, num_colors=2) for r in radii])
    areas = [np.pi * (r / 2 * 31) ** 2 for r in radii]
    got = appearance.object_mass(appearance.color_mass(videos, 2))
    assert got == pytest.approx(np.median(areas), rel=0.08)
    assert not got == pytest.approx(max(areas), rel=0.3)


def test_the_flag_threshold_rises_with_real_variation():
    # Real videos that already vary above the fixed floor (a disc fading to 10-70% of its
    # mass; the deepest fade varies more than twice the median one): generated videos exactly
    # like them are no worse than real, so none is flagged.
    disc = _disc_video(0.3, color=0, num_colors=1, frames=8)
    real = np.concatenate([_fade(disc, np.linspace(1, a, 8)) for a in (0.1, 0.5, 0.6, 0.7)])
    res = appearance.appearance_consistency(real, real.copy(), 1)
    assert res["real"]["median"] > appearance.FLAG_FLOOR
    assert res["flag_threshold"] > 2 * res["real"]["p90"]
    assert res["generated_flagged"] == res["real_flagged"] == 0


def test_the_flag_threshold_is_twice_the_real_videos_99th_percentile():
    # The rule as documented: flagged above max(FLAG_FLOOR, 2 x the 99th percentile of the
    # real videos' variation). Real discs fade to 50-65% (variation ~0.1-0.16, threshold
    # ~0.33); a generated disc that blinks between 100% and 20% varies ~0.4: between twice
    # the real p99 and three times the real maximum, so a looser rule would pass it.
    disc = _disc_video(0.3, color=0, num_colors=1, frames=8)
    real = np.concatenate([_fade(disc, np.linspace(1, a, 8)) for a in (0.5, 0.55, 0.6, 0.65)])
    blink = _fade(disc, [1.0, 0.2] * 4)
    real_m = appearance.color_mass(real, 1)
    ref = appearance.object_mass(real_m)
    real_v = appearance.variation(real_m, ref)
    gen_v = appearance.variation(appearance.color_mass(blink, 1), ref)[0]
    p99 = np.percentile(real_v, 99)
    assert 2 * p99 > appearance.FLAG_FLOOR and 2 * p99 < gen_v < 3 * real_v.max()
    res = appearance.appearance_consistency(real, np.concatenate([blink, real[:1]]), 1)
    assert res["flag_threshold"] == pytest.approx(2 * p99, rel=1e-12)
    assert res["generated_flagged"] == 0.5 and res["real_flagged"] == 0


def test_background_has_no_mass():
    bg = np.broadcast_to((np.asarray(BACKGROUND) * 255).astype(np.uint8), (2, 4, 16, 16, 3))
    assert appearance.color_mass(np.ascontiguousarray(bg), 2).max() == 0


def _fade(videos, alpha):
    """Blend every frame t towards the background by (1 - alpha[t])."""
    bg = np.asarray(BACKGROUND) * 255
    a = np.asarray(alpha, np.float64)[None, :, None, None, None]
    return (bg + a * (videos.astype(np.float64) - bg)).astype(np.uint8)


@pytest.fixture(scope="module")
def pendulum_clips(tiny_pendulum_h5):
    ds = open_h5(tiny_pendulum_h5)
    return np.asarray(ds.frames[:, :16])  # 24 videos x 16 frames


def test_real_scores_near_zero_and_fading_scores_worse(pendulum_clips):
    real, other = pendulum_clips[:12], pendulum_clips[12:]
    same = appearance.appearance_consistency(real, other, num_colors=1)
    assert same["real"]["median"] < 0.02 and same["generated"]["median"] < 0.02
    assert same["generated_flagged"] == 0 and same["real_flagged"] == 0
    assert same["mass_ratio"] == pytest.approx(1, abs=0.1)
    t = other.shape[1]
    faded = appearance.appearance_consistency(real, _fade(other, np.linspace(1, 0, t)), 1)
    # A linear ramp 1 -> 0 over 16 frames has std 0.33 of the object's mass.
    assert faded["generated"]["median"] > 0.25 > 10 * same["generated"]["median"]
    assert faded["generated_flagged"] == 1 and faded["real_flagged"] == 0
    appearing = appearance.appearance_consistency(real, _fade(other, np.linspace(0, 1, t)), 1)
    assert appearing["generated_flagged"] == 1
    # Half the videos lose their ball half-way: half of them are counted.
    half = other.copy()
    half[:6] = _fade(other[:6], (np.arange(t) < t // 2).astype(float))
    split = appearance.appearance_consistency(real, half, 1)
    assert split["generated_flagged"] == pytest.approx(0.5)


def test_blank_videos_show_in_the_mass_ratio_and_are_counted(pendulum_clips):
    blank = _fade(pendulum_clips[12:], np.zeros(16))
    res = appearance.appearance_consistency(pendulum_clips[:12], blank, 1)
    assert res["mass_ratio"] < 0.01 and res["generated"]["median"] == 0
    # their variation is zero, so no flag caught them: "flagged 0" read as a clean generator
    assert res["generated_flagged"] == 0
    assert res["generated_blank"] == 1 and res["real_blank"] == 0
    # a third of them blank, and a ball faded out along the video is not blank
    mixed = pendulum_clips[12:].copy()
    mixed[:4] = blank[:4]
    mixed[4:8] = _fade(mixed[4:8], np.linspace(1, 0, 16))
    res = appearance.appearance_consistency(pendulum_clips[:12], mixed, 1)
    assert res["generated_blank"] == pytest.approx(4 / 12)


@pytest.mark.parametrize("num_colors", [1, 2, 3, 6])
@pytest.mark.parametrize("value", [0, 128, 255])
def test_a_flat_grey_black_or_white_frame_has_no_mass(num_colors, value):
    # Far from the background but on no palette colour's line from it: a blank generator's
    # frame. Counted by its projection it weighed 0.03 to 30 real objects.
    flat = np.full((1, 2, 8, 8, 3), value, np.uint8)
    assert appearance.color_mass(flat, num_colors).max() == 0


def test_a_blank_generator_has_a_mass_ratio_near_zero(pendulum_clips):
    grey = np.full_like(pendulum_clips[12:], 128)
    res = appearance.appearance_consistency(pendulum_clips[:12], grey, 1)
    assert res["mass_ratio"] < 0.01


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="uint8"):
        appearance.color_mass(np.zeros((1, 2, 8, 8, 3), np.float32), 1)
    bg = np.broadcast_to((np.asarray(BACKGROUND) * 255).astype(np.uint8), (2, 4, 8, 8, 3))
    with pytest.raises(ValueError, match="no object"):
        appearance.appearance_consistency(np.ascontiguousarray(bg), np.ascontiguousarray(bg), 1)


def _flat(rgb, num_frames=1, size=4):
    """uint8 video [1, T, size, size, 3] of one RGB colour in [0, 1]."""
    px = np.round(np.asarray(rgb, np.float64) * 255).astype(np.uint8)
    return np.broadcast_to(px, (1, num_frames, size, size, 3)).copy()


def test_a_pixel_counts_at_most_one_pixel_of_mass():
    # Palette of 4: red, (0.5, 1, 0), cyan, (0.5, 0, 1). Pure yellow lies past (0.5, 1, 0)
    # along its direction from the background (projection 1.15): it is that colour, fully,
    # and a pixel's weight is in [0, 1], so 16 such pixels weigh 16.
    mass = appearance.color_mass(_flat([1.0, 1.0, 0.0]), 4)
    np.testing.assert_allclose(mass[0, 0], [0.0, 16.0, 0.0, 0.0], atol=1e-9)


@pytest.mark.parametrize("contrast, foreground", [(0.2, True), (0.11, True), (0.09, False),
                                                  (0.05, False)])   # either side of 0.1
def test_faint_pixels_count_above_the_minimum_contrast(contrast, foreground):
    # A pixel `contrast` away from the background (Euclidean, [0, 1] RGB) towards the one
    # palette colour c has weight contrast / |c - background| when it clears MIN_CONTRAST.
    bg = np.asarray(BACKGROUND)
    d = palette(1)[0] - bg
    video = _flat(bg + contrast * d / np.linalg.norm(d))
    want = 16 * contrast / np.linalg.norm(d) if foreground else 0.0
    assert appearance.color_mass(video, 1)[0, 0, 0] == pytest.approx(want, rel=0.02, abs=1e-9)


def test_object_mass_is_the_median_time_mean_of_the_colours_present():
    # [video, frame, colour] masses by hand. Time means: video 0 has 25 (colour 0) and
    # exactly 1 pixel (colour 1, which counts), video 1 has 0.5 (colour 0, absent) and 0.
    m = np.zeros((2, 4, 2))
    m[0, :, 0] = [10, 20, 30, 40]
    m[0, :, 1] = 1.0
    m[1, :, 0] = [0, 0, 1, 1]
    assert appearance.object_mass(m) == pytest.approx(13.0)  # median of 25 and 1


def test_variation_sums_each_colours_spread_over_time():
    m = np.zeros((1, 4, 3))
    m[0, :, 0] = [0, 2, 0, 2]  # std 1
    m[0, :, 1] = [4, 0, 4, 0]  # std 2
    m[0, :, 2] = 5             # still
    np.testing.assert_allclose(appearance.variation(m, 2.0), [1.5], rtol=1e-12)


def test_the_mass_ratio_compares_medians_of_total_mass():
    # Real discs of areas in proportion 1 : 4 : 16 (mean 7, median 4); generated videos all
    # like the median one have the typical real foreground mass: a ratio of 1.
    real = np.concatenate([_disc_video(r, color=0, num_colors=1) for r in (0.1, 0.2, 0.4)])
    gen = np.concatenate([_disc_video(0.2, color=0, num_colors=1)] * 3)
    res = appearance.appearance_consistency(real, gen, 1)
    assert res["mass_ratio"] == pytest.approx(1.0, abs=1e-9)


def test_a_generator_that_reproduces_the_real_videos_has_a_mass_ratio_of_one():
    # Real discs of areas in proportion 1 : 4 : 16 (mean 7, median 4), generated the same three:
    # the ratio compares the two medians, 1; the generated mean over the real median would
    # report 7/4 for a generator that draws exactly the real objects.
    real = np.concatenate([_disc_video(r, color=0, num_colors=1) for r in (0.1, 0.2, 0.4)])
    res = appearance.appearance_consistency(real, real.copy(), 1)
    assert res["mass_ratio"] == pytest.approx(1.0, abs=1e-9)


def test_a_pixel_belongs_to_the_colour_whose_line_it_lies_nearest():
    # Palette of 6 (red 0 ... magenta 5). A pixel 0.5 from the background, 29 degrees off
    # magenta's direction towards red's (36.4 degrees off red's): it is magenta, with weight
    # 0.5 cos(29 deg) / |magenta - background| each. Red, whose line is farther, would win a
    # vote by weight (0.475 against 0.441: red lies nearer the background).
    bg = np.asarray(BACKGROUND)
    c = palette(6) - bg
    um, ur = c[5] / np.linalg.norm(c[5]), c[0] / np.linalg.norm(c[0])
    towards_red = ur - (ur @ um) * um
    towards_red /= np.linalg.norm(towards_red)
    a = np.radians(29.0)
    mass = appearance.color_mass(_flat(bg + 0.5 * (np.cos(a) * um + np.sin(a) * towards_red)), 6)
    want = 16 * 0.5 * np.cos(a) / np.linalg.norm(c[5])
    assert mass[0, 0, 5] == pytest.approx(want, rel=0.02)
    np.testing.assert_array_equal(mass[0, 0, :5], 0.0)


def test_color_mass_in_batches_weighs_every_video():
    # Five videos of one disc each, of radii 0.15 to 0.35, weighed two videos at a time: each
    # keeps its own disc's area (see test_color_mass_is_the_disc_area).
    radii = (0.15, 0.2, 0.25, 0.3, 0.35)
    videos = np.concatenate([_disc_video(r, color=0, num_colors=1) for r in radii])
    mass = appearance.color_mass(videos, 1, batch=2)
    areas = np.pi * (np.array(radii) / 2 * 31) ** 2
    np.testing.assert_allclose(mass[..., 0], np.repeat(areas[:, None], 3, 1), rtol=0.08)


def test_a_generated_video_is_blank_by_its_mass_per_frame():
    # Real discs of radius 0.3. Generated: two videos of a speck of 5% of that area (blank:
    # under BLANK_SHARE = 10% of an object) and two of a disc of 20% (not blank), four frames
    # each; a video's total mass over its frames would count the specks as 20%.
    real = np.concatenate([_disc_video(0.3, color=0, num_colors=1, frames=4)] * 3)
    gen = np.concatenate([_disc_video(0.3 * np.sqrt(share), color=0, num_colors=1, frames=4)
                          for share in (0.05, 0.05, 0.2, 0.2)])
    res = appearance.appearance_consistency(real, gen, 1)
    assert res["generated_blank"] == pytest.approx(0.5) and res["real_blank"] == 0


def test_a_pixel_off_the_background_away_from_every_colour_weighs_nothing():
    # Its projection on the colour's line is negative: weight 0, not a negative mass that
    # would cancel a real object's (its offset lies on the line, so the residual test
    # cannot catch it).
    bg = np.asarray(BACKGROUND)
    d = palette(1)[0] - bg
    assert appearance.color_mass(_flat(bg - 0.3 * d / np.linalg.norm(d)), 1).max() == 0


@pytest.mark.parametrize("degrees, owned", [(33.0, True), (37.5, False)])
def test_a_pixel_is_a_colours_within_35_degrees_of_its_line(degrees, owned):
    # MAX_RESIDUAL_SHARE = 1/3 of the squared offset: sin^2 of the angle to the colour's
    # line, asin(sqrt(1/3)) = 35.3 degrees. A pixel 0.2 from the background at 33 degrees
    # weighs 0.2 cos(33 deg) / |colour - background|; at 37.5 degrees nothing.
    bg = np.asarray(BACKGROUND)
    d = palette(1)[0] - bg
    u = d / np.linalg.norm(d)
    v = np.cross(u, [0.0, 0.0, 1.0])
    v /= np.linalg.norm(v)
    a = np.radians(degrees)
    mass = appearance.color_mass(_flat(bg + 0.2 * (np.cos(a) * u + np.sin(a) * v)), 1)
    want = 16 * 0.2 * np.cos(a) / np.linalg.norm(d) if owned else 0.0
    assert mass[0, 0, 0] == pytest.approx(want, rel=0.03, abs=1e-9)


def test_blank_is_under_a_tenth_of_an_object_per_frame_and_real_videos_count_too():
    # Real discs of radius 0.6 (269 pixels), one of four real videos faded out entirely;
    # generated specks of 8% and 12% of that area, either side of BLANK_SHARE = 10%.
    disc = _disc_video(0.6, color=0, num_colors=1, frames=4)
    real = np.concatenate([disc, disc, disc, _fade(disc, np.zeros(4))])
    gen = np.concatenate([_disc_video(0.6 * np.sqrt(share), color=0, num_colors=1, frames=4)
                          for share in (0.08, 0.12)])
    res = appearance.appearance_consistency(real, gen, 1)
    assert res["generated_blank"] == pytest.approx(0.5) and res["real_blank"] == 0.25


@pytest.mark.parametrize("faded_to, flagged", [(0.8, False), (0.65, True)])
def test_still_real_videos_flag_above_the_fixed_floor_only(faded_to, flagged):
    # Real discs that never change: twice their 99th percentile is 0, so FLAG_FLOOR = 0.1
    # alone decides. A disc fading linearly to 80% varies 0.065 of an object (not flagged),
    # to 65% 0.115 (flagged).
    disc = _disc_video(0.3, color=0, num_colors=1, frames=8)
    res = appearance.appearance_consistency(np.concatenate([disc] * 4),
                                            _fade(disc, np.linspace(1, faded_to, 8)), 1)
    assert res["flag_threshold"] == appearance.FLAG_FLOOR
    assert res["generated_flagged"] == float(flagged)


def test_the_summaries_are_median_mean_and_90th_percentile():
    # a skewed set, where the three differ: 0, 0, 0.9
    got = appearance._summary(np.array([0.0, 0.0, 0.9]))
    assert got == pytest.approx({"median": 0.0, "mean": 0.3, "p90": 0.72})


def test_a_disc_shown_in_one_frame_of_sixteen_is_blank_and_weighs_a_sixteenth():
    # A generated video whose object flashes in one frame of 16: its mass per frame is 1/16 of
    # a real object's, under BLANK_SHARE, and the mass ratio (medians of mass per frame) is
    # 1/16; its frame of largest mass would call it a whole object, neither blank nor light.
    disc = _disc_video(0.3, color=0, num_colors=1, frames=16)
    flash = _fade(disc, np.eye(16)[0])
    assert (flash[0, 1:] == flash[0, 1, 0, 0]).all()                  # 15 background frames
    res = appearance.appearance_consistency(np.concatenate([disc] * 3), flash, 1)
    assert res["generated_blank"] == 1.0 and res["real_blank"] == 0.0
    assert res["mass_ratio"] == pytest.approx(1 / 16, rel=1e-6)


def test_speed_is_the_centroid_displacement_in_pixels():
    # A disc moving along the row axis by a known world step per frame: pixel centres are
    # linspace over the canvas width 2, so a world step s is s / 2 * (R - 1) pixels.
    frames, res, step = 6, 32, 0.08
    pos = np.zeros((1, frames, 1, 2))
    pos[0, :, 0, 0] = -0.2 + step * np.arange(frames)
    video = render(pos, np.array([[0.2]]), np.array([[0]]), 1, (-1.0, 1.0), res)
    mass, cen = appearance.color_moments(video, 1)
    np.testing.assert_allclose(mass, appearance.color_mass(video, 1))
    got = appearance.speed(mass, cen)
    assert got.shape == (1,)
    assert got[0] == pytest.approx(step / 2 * (res - 1), rel=0.05)
    still = _disc_video(0.2, color=0, num_colors=1, frames=frames)
    assert appearance.speed(*appearance.color_moments(still, 1))[0] == 0


def test_a_frozen_generator_has_a_motion_ratio_near_zero(pendulum_clips):
    real, other = pendulum_clips[:12], pendulum_clips[12:]
    same = appearance.appearance_consistency(real, other, 1)
    assert 0.5 < same["motion_ratio"] < 2 and same["motion"]["real"]["median"] > 0.2
    # each generated video its own first frame, 16 times: no motion, yet a clean appearance
    frozen = np.repeat(other[:, :1], other.shape[1], axis=1)
    res = appearance.appearance_consistency(real, frozen, 1)
    assert res["motion_ratio"] == 0 and res["generated"]["median"] == 0
    assert res["mass_ratio"] == pytest.approx(1, abs=0.1)
    # nothing drawn moves nothing either
    blank = _fade(other, np.zeros(other.shape[1]))
    assert appearance.appearance_consistency(real, blank, 1)["motion_ratio"] == 0


def test_a_collapsed_generator_has_a_spread_ratio_near_zero(pendulum_clips):
    real, other = pendulum_clips[:12], pendulum_clips[12:]
    same = appearance.appearance_consistency(real, other, 1)
    assert 0.5 < same["spread_ratio"] < 2 and same["spread"]["real"] > 2
    # one moving video for every noise: it moves like real ones, but every pair is equal
    one = np.repeat(other[:1], len(other), axis=0)
    res = appearance.appearance_consistency(real, one, 1)
    assert res["spread_ratio"] == 0 and res["motion_ratio"] > 0.25
    # half the videos one, half another: pairs across the halves still differ
    two = np.concatenate([np.repeat(other[:1], 6, axis=0), np.repeat(other[1:2], 6, axis=0)])
    assert 0 < appearance.appearance_consistency(real, two, 1)["spread_ratio"] < 1


def test_spread_is_the_median_pairwise_centroid_distance():
    # three one-disc videos at fixed rows 0.0, 0.2 and 0.6 (world units): pair distances are
    # 0.2, 0.6 and 0.4 world units, median 0.4 = 0.4 / 2 * 31 pixels
    videos = []
    for row in (0.0, 0.2, 0.6):
        pos = np.zeros((1, 4, 1, 2))
        pos[0, :, 0, 0] = row - 0.3
        videos.append(render(pos, np.array([[0.2]]), np.array([[0]]), 1, (-1.0, 1.0), 32))
    _, cen = appearance.color_moments(np.concatenate(videos), 1)
    assert appearance.spread(cen) == pytest.approx(0.4 / 2 * 31, rel=0.03)
    assert np.isnan(appearance.spread(cen[:1]))           # one video: no pair
    blank = np.full_like(cen, np.nan)                     # nothing drawn: no distance
    assert np.isnan(appearance.spread(blank))
    res = appearance.appearance_consistency(np.concatenate(videos), np.concatenate(videos)[:1], 1)
    assert res["spread_ratio"] is None and res["spread"]["generated"] is None
