"""Music synthesis building blocks for the embedded MUSDB18-format corpus.

Every track is a short song: a tempo, a key and a chord progression (:class:`Song`) shared by four
instruments that follow it, each rendered by a small, numpy-vectorised synthesiser:

* :func:`render_vocals` -- a source-filter singing voice: a band-limited glottal pulse train
  following a melody (with vibrato, glides and scoops) shaped by vowel formants, unvoiced consonant
  bursts between syllables, and rests between phrases.
* :func:`render_drums` -- a synthetic drum kit (kick, snare, hi-hats, toms, crash) in bar patterns
  with ghost notes, fills and crashes.
* :func:`render_bass` -- a plucked bass on the chord roots (E1--E3) in a per-track rhythm pattern.
* :func:`render_other` -- sustained chord pads (saw / square / organ) with voice leading, and
  optionally a plucked arpeggio.

:func:`mix_stems` sets the levels.  All randomness comes from the ``numpy.random.Generator`` each
function is given, so a track is a pure function of its seeds.  Oscillators are wavetables built
from a harmonic spectrum limited below Nyquist (no aliasing), read at a phase that advances by the
instantaneous frequency; Python loops run over notes and drum hits, never over samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal
from scipy.ndimage import uniform_filter1d

STEMS = ("vocals", "drums", "bass", "other")

NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
ROMAN = {
    "major": ("I", "ii", "iii", "IV", "V", "vi", "vii°"),
    "minor": ("i", "ii°", "III", "iv", "v", "VI", "VII"),
}
#: Common pop progressions, as 0-based scale degrees (one chord per ``beats_per_chord``).
PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 4, 3), (1, 4, 0, 0), (0, 2, 3, 4),
              (3, 0, 4, 5)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4)),
}

TABLE_SIZE = 2048  # samples per wavetable cycle (a power of two keeps the phase lookup exact)


# --------------------------------------------------------------------------------------------
# Song plan
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Song:
    """The musical plan shared by all stems: length, tempo, key and chord progression."""

    sample_rate: int
    n_samples: int
    bpm: float
    key: int  # pitch class of the tonic, 0 = C
    mode: str  # "major" or "minor"
    progression: tuple[int, ...]  # scale degrees, cycled
    beats_per_chord: int
    beats_per_bar: int = 4

    @property
    def beat_samples(self) -> float:
        return 60.0 / self.bpm * self.sample_rate

    @property
    def n_beats(self) -> int:
        return int(np.ceil(self.n_samples / self.beat_samples))

    @property
    def n_bars(self) -> int:
        return int(np.ceil(self.n_beats / self.beats_per_bar))

    def sample_at(self, beat: float) -> int:
        return int(round(beat * self.beat_samples))

    def degree_at(self, beat: float) -> int:
        return self.progression[int(beat // self.beats_per_chord) % len(self.progression)]

    def chord_pcs(self, beat: float, seventh: bool = False) -> tuple[int, ...]:
        """Pitch classes of the diatonic chord at ``beat`` (stacked scale thirds, root first)."""
        scale, degree = SCALES[self.mode], self.degree_at(beat)
        return tuple((self.key + scale[(degree + s) % 7]) % 12 for s in (0, 2, 4, 6)[: 3 + seventh])

    def chord_spans(self) -> list[tuple[float, float]]:
        """``(start_beat, n_beats)`` of every chord until the end of the track."""
        starts = np.arange(0, self.n_beats, self.beats_per_chord)
        return [(float(s), float(self.beats_per_chord)) for s in starts]

    def scale_notes(self, lo: int, hi: int) -> np.ndarray:
        """MIDI notes of the key between ``lo`` and ``hi`` inclusive."""
        midi = np.arange(lo, hi + 1)
        return midi[np.isin((midi - self.key) % 12, SCALES[self.mode])]

    def describe(self) -> dict:
        return {
            "bpm": self.bpm,
            "key": f"{NOTE_NAMES[self.key]} {self.mode}",
            "progression": [ROMAN[self.mode][d] for d in self.progression],
            "beats_per_chord": self.beats_per_chord,
        }


def plan_song(rng: np.random.Generator, n_samples: int, sample_rate: int) -> Song:
    """Draw a tempo (80--140 bpm), a key, a mode and a progression; slow songs may change chord
    every half bar and fast ones every two bars, so the harmonic rhythm stays musical."""
    bpm = float(rng.integers(80, 141))
    mode = "major" if rng.random() < 0.6 else "minor"
    progression = PROGRESSIONS[mode][rng.integers(len(PROGRESSIONS[mode]))]
    beats_per_chord = 4
    if bpm < 95 and rng.random() < 0.5:
        beats_per_chord = 2
    elif bpm > 125 and rng.random() < 0.5:
        beats_per_chord = 8
    return Song(sample_rate, n_samples, bpm, int(rng.integers(12)), mode, tuple(progression),
                beats_per_chord)


# --------------------------------------------------------------------------------------------
# DSP helpers
# --------------------------------------------------------------------------------------------
def midi_to_hz(midi):
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def smooth(x: np.ndarray, width: float) -> np.ndarray:
    """Triangular smoothing (two box filters of ``width`` samples): glides and soft gates."""
    w = max(int(round(width)), 1)
    return uniform_filter1d(uniform_filter1d(x, w, mode="nearest"), w, mode="nearest")


def slow_noise(rng: np.random.Generator, n: int, width: float) -> np.ndarray:
    """Smoothed Gaussian noise with unit standard deviation (slow random drifts)."""
    hop = max(int(width // 8), 1)  # drawn at a control rate, then interpolated
    x = smooth(rng.standard_normal(n // hop + 2), 8)
    x = np.interp(np.arange(n) / hop, np.arange(len(x)), x)
    return x / (np.std(x) + 1e-12)


def max_harmonics(freq: float, sr: int, limit: int = 64) -> int:
    """How many harmonics of ``freq`` stay below 0.45 * sr (the anti-aliasing limit)."""
    return int(np.clip(0.45 * sr // max(freq, 1.0), 1, limit))


def harmonic_table(amps: np.ndarray, phases: np.ndarray | None = None) -> np.ndarray:
    """One cycle of ``sum_k amps[k-1] * sin(2 pi k x + phases[k-1])`` (inverse real FFT)."""
    spectrum = np.zeros(TABLE_SIZE // 2 + 1, dtype=np.complex128)
    ph = np.zeros(len(amps)) if phases is None else phases
    spectrum[1 : len(amps) + 1] = np.asarray(amps) * np.exp(1j * (ph - np.pi / 2))
    return np.fft.irfft(spectrum, TABLE_SIZE) * (TABLE_SIZE / 2)


def lowpass_gain(freqs: np.ndarray, cutoff: float, order: int = 2) -> np.ndarray:
    """Magnitude of a Butterworth-like low-pass, applied to harmonic amplitudes (static filter)."""
    return 1.0 / np.sqrt(1.0 + (freqs / cutoff) ** (2 * order))


def table_lookup(table: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Read a wavetable at ``phase`` (in cycles) with linear interpolation."""
    x = (phase % 1.0) * len(table)
    i = x.astype(np.int64)
    frac = x - i
    ext = np.append(table, table[0])
    return ext[i] * (1.0 - frac) + ext[i + 1] * frac


def oscillator(table: np.ndarray, freq: float, n: int, sr: int, phase0: float = 0.0) -> np.ndarray:
    return table_lookup(table, phase0 + freq * np.arange(n) / sr)


def envelope(n_hold: int, n_release: int, sr: int, attack: float, decay: float,
             sustain: float) -> np.ndarray:
    """Attack (linear) / exponential decay to ``sustain`` / linear release after ``n_hold``."""
    n = n_hold + n_release
    t = np.arange(n) / sr
    env = np.minimum(t / max(attack, 1.0 / sr), 1.0) * (sustain + (1.0 - sustain) * np.exp(-t / decay))
    return env * np.clip(1.0 - (np.arange(n) - n_hold) / max(n_release, 1), 0.0, 1.0)


def pan(mono: np.ndarray, position: float) -> np.ndarray:
    """Constant-power pan, ``position`` in [-1 (left), 1 (right)]; centre keeps unit gain."""
    theta = (position + 1.0) * np.pi / 4
    return mono[:, None] * (np.sqrt(2.0) * np.array([np.cos(theta), np.sin(theta)]))


def add_at(out: np.ndarray, start: int, x: np.ndarray) -> None:
    """``out[start:start+len(x)] += x``, clipped to the bounds of ``out``."""
    if start >= len(out) or start + len(x) <= 0:
        return
    lo = max(start, 0)
    hi = min(start + len(x), len(out))
    out[lo:hi] += x[lo - start : hi - start]


def band_sos(lo: float | None, hi: float | None, sr: int, order: int = 4) -> np.ndarray:
    """Butterworth band/high/low-pass sections with the edges kept below Nyquist."""
    nyq_safe = 0.45 * sr
    if hi is not None and hi >= nyq_safe:
        hi = None
    if lo is not None and lo >= 0.8 * nyq_safe:
        lo = 0.8 * nyq_safe
    if lo is not None and hi is not None:
        return signal.butter(order, [lo, hi], "bandpass", fs=sr, output="sos")
    if lo is not None:
        return signal.butter(order, lo, "highpass", fs=sr, output="sos")
    if hi is not None:
        return signal.butter(order, hi, "lowpass", fs=sr, output="sos")
    return np.array([[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]])  # pass-through: the band is above Nyquist


def filtered_noise(rng: np.random.Generator, n: int, sr: int, lo, hi, channels: int = 1) -> np.ndarray:
    """White noise through :func:`band_sos`, normalised to unit RMS."""
    x = signal.sosfilt(band_sos(lo, hi, sr), rng.standard_normal((n, channels)), axis=0)
    x /= np.sqrt(np.mean(x**2)) + 1e-12
    return x[:, 0] if channels == 1 else x


def reverb_ir(rng: np.random.Generator, sr: int, rt60: float, predelay: float = 0.02,
              damping_hz: float = 6000.0) -> np.ndarray:
    """Stereo room impulse response: exponentially decaying (-60 dB at ``rt60``), low-passed noise,
    independent per channel so the reverb also widens the stereo image; unit energy per channel."""
    n = int(rt60 * sr)
    decay = np.exp(-6.91 * np.arange(n) / (rt60 * sr))[:, None]
    ir = signal.sosfilt(band_sos(None, damping_hz, sr, 2), rng.standard_normal((n, 2)), axis=0) * decay
    ir = np.concatenate([np.zeros((int(predelay * sr), 2)), ir])
    return ir / np.sqrt(np.sum(ir**2, axis=0))


def add_reverb(stereo: np.ndarray, ir: np.ndarray, wet: float) -> np.ndarray:
    """Dry signal plus a ``wet``-scaled reverb of its mono sum (one send, stereo return)."""
    send = stereo.mean(axis=1, keepdims=True)
    return stereo + wet * signal.oaconvolve(send, ir, axes=0)[: len(stereo)]


# --------------------------------------------------------------------------------------------
# Drums
# --------------------------------------------------------------------------------------------
def fade_out(x: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """Linear fade over the last ``fraction`` of a sample, so a truncated decay does not click."""
    ramp = np.minimum(1.0, (1.0 - np.arange(len(x)) / len(x)) / fraction)
    return x * ramp.reshape(-1, *[1] * (x.ndim - 1))


def _kick(rng, sr):
    """Kick: a sine whose pitch falls exponentially (beater to shell resonance) with a fast
    amplitude decay, plus a short high-passed click for the beater attack."""
    f_hi, f_lo, tau = rng.uniform(120, 190), rng.uniform(42, 60), rng.uniform(0.2, 0.4)
    t = np.arange(int(0.6 * sr)) / sr
    freq = f_lo + (f_hi - f_lo) * np.exp(-t / 0.035)
    body = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / tau)
    click = filtered_noise(rng, len(t), sr, 1500, None) * np.exp(-t / 0.004) * 0.25
    return fade_out(body + click)


def _snare(rng, sr):
    """Snare: two damped drum-head modes plus band-passed noise (the snare wires), which decays
    more slowly than the tone."""
    f0, tone_tau, noise_tau = rng.uniform(170, 240), rng.uniform(0.04, 0.08), rng.uniform(0.1, 0.2)
    t = np.arange(int(0.5 * sr)) / sr
    tone = (np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(2 * np.pi * 1.6 * f0 * t)) * np.exp(-t / tone_tau)
    wires = filtered_noise(rng, len(t), sr, 1200, 9000) * np.exp(-t / noise_tau)
    return fade_out(0.6 * tone + 0.45 * wires)


def _tom(rng, sr, f0):
    """Tom: a sine sliding down ~15% in pitch with a medium decay and a little noise."""
    t = np.arange(int(0.5 * sr)) / sr
    freq = f0 * (1 + 0.15 * np.exp(-t / 0.05))
    body = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.18)
    return fade_out(body + 0.1 * filtered_noise(rng, len(t), sr, 400, 4000) * np.exp(-t / 0.05))


def _metal(rng, sr, dur, decay, cutoff, channels):
    """Cymbals (TR-808 style): six detuned square waves (inharmonic, metallic) plus noise,
    high-passed; ``channels=2`` draws independent noise per channel for a wide cymbal."""
    t = np.arange(int(dur * sr)) / sr
    partials = np.array([205.3, 304.4, 369.6, 522.7, 540.0, 800.0]) * rng.uniform(0.95, 1.05)
    metal = np.sign(np.sin(2 * np.pi * partials[:, None] * t)).sum(axis=0)
    x = 0.3 * metal[:, None] + rng.standard_normal((len(t), channels))
    x = signal.sosfilt(band_sos(cutoff, None, sr), x, axis=0)
    x = fade_out(x * np.exp(-t / decay)[:, None])
    return x / (np.abs(x).max() + 1e-12)


#: Kick patterns in 16th-note steps of one 4/4 bar.
KICK_PATTERNS = ((0, 8), (0, 8, 10), (0, 6, 8), (0, 7, 10), (0, 3, 8, 11), (0, 4, 8, 12), (0, 10))


def render_drums(song: Song, rng: np.random.Generator) -> np.ndarray:
    """A drum kit playing a per-track 4/4 pattern (kick pattern, backbeat snare, 8th or 16th
    hi-hats with accents) with ghost notes, an open hi-hat now and then, a snare/tom fill ending
    most 4-bar phrases and a crash on the downbeat after it.  Hits are pre-rendered samples added
    at the 16th-note grid with small timing and velocity variations (a human drummer)."""
    sr, n = song.sample_rate, song.n_samples
    hats = [_metal(rng, sr, 0.25, rng.uniform(0.025, 0.05), rng.uniform(6500, 9000), 1)[:, 0]
            for _ in range(3)]
    kit = {
        "kick": (_kick(rng, sr), 0.0, 1.0),  # (sample(s), pan position, gain)
        "snare": (_snare(rng, sr), rng.uniform(-0.1, 0.1), 0.8),
        "hat": (hats, rng.choice([-1, 1]) * rng.uniform(0.15, 0.35), 0.35),
        "open_hat": (_metal(rng, sr, 0.6, rng.uniform(0.15, 0.3), 6000, 2), 0.25, 0.3),
        "crash": (_metal(rng, sr, 2.0, rng.uniform(0.6, 1.0), 4000, 2), 0.0, 0.45),
    }
    tom_freqs = np.array([200.0, 150.0, 110.0]) * rng.uniform(0.85, 1.15)
    for i, f in enumerate(tom_freqs):
        kit[f"tom{i}"] = (_tom(rng, sr, f), (-0.4, 0.0, 0.4)[i], 0.7)

    kick_pattern = KICK_PATTERNS[rng.integers(len(KICK_PATTERNS))]
    hat_step = 2 if song.bpm > 110 or rng.random() < 0.5 else 1
    events = []  # (instrument, step in 16ths from the start, velocity)
    for bar in range(song.n_bars):
        s0 = 16 * bar
        fill_from = 16
        if bar % 4 == 3 and rng.random() < 0.85:
            fill_from = 8 if rng.random() < 0.35 else 12
        if bar % 4 == 0 and bar > 0:
            events.append(("crash", s0, 1.0))
        kicks = set(kick_pattern)
        if rng.random() < 0.3:
            kicks.add(int(rng.choice([3, 6, 11, 14])))
        events += [("kick", s0 + s, 1.0 if s == 0 else 0.85) for s in sorted(kicks) if s < fill_from]
        events += [("snare", s0 + s, 1.0) for s in (4, 12) if s < fill_from]
        events += [("snare", s0 + s, 0.25) for s in (7, 9, 15) if s < fill_from and rng.random() < 0.15]
        open_at = 14 if rng.random() < 0.25 else -1
        for s in range(0, min(16, fill_from), hat_step):
            accent = 0.9 if s % 4 == 0 else (0.65 if s % 2 == 0 else 0.45)
            events.append(("open_hat" if s == open_at else "hat", s0 + s, accent))
        for i, s in enumerate(range(fill_from, 16)):  # fill: crescendo down the toms or on the snare
            inst = "snare" if rng.random() < 0.4 else f"tom{min(3 * i // max(16 - fill_from, 1), 2)}"
            events.append((inst, s0 + s, 0.55 + 0.45 * i / max(15 - fill_from, 1)))

    out = np.zeros((n, 2))
    step_samples = song.beat_samples / 4
    jitter = rng.normal(0.0, 0.003 * sr, len(events))
    velocity = np.clip(rng.normal(1.0, 0.07, len(events)), 0.7, 1.2)
    for name in kit:
        sample, position, gain = kit[name]
        track = np.zeros((n, 2))
        for k, (inst, step, vel) in enumerate(events):
            if inst != name:
                continue
            hit = sample[k % len(sample)] if isinstance(sample, list) else sample
            hit = pan(hit, position) if hit.ndim == 1 else hit
            add_at(track, int(round(step * step_samples + jitter[k])), gain * vel * velocity[k] * hit)
        out += track
    return out


# --------------------------------------------------------------------------------------------
# Bass
# --------------------------------------------------------------------------------------------
#: Bass rhythms for one bar: (onset beat, length in beats, interval above the root: 0 root,
#: 7 the chord's fifth, 12 octave).
BASS_PATTERNS = (
    ((0, 0.9, 0), (1, 0.9, 0), (2, 0.9, 0), (3, 0.9, 0)),
    tuple((i / 2, 0.45, 12 if i == 6 else 0) for i in range(8)),
    ((0, 1.4, 0), (1.5, 0.45, 0), (2, 1.4, 7), (3.5, 0.45, 12)),
    ((0, 0.7, 0), (0.75, 0.7, 0), (1.5, 0.9, 0), (2.5, 0.45, 7), (3, 0.9, 12)),
    ((0, 1.9, 0), (2, 1.4, 0), (3.5, 0.45, 7)),
)


def render_bass(song: Song, rng: np.random.Generator) -> np.ndarray:
    """A plucked bass on the chord roots (with fifths and octaves) in a per-track rhythm pattern,
    in the E1--E3 register.  Timbre: a few harmonics with a k^-p roll-off and a low-pass; each note
    starts bright and darkens (cross-fade between a bright and a dark wavetable, like a plucked
    string losing its upper harmonics) under an attack / decay / release envelope."""
    sr, n = song.sample_rate, song.n_samples
    pattern = BASS_PATTERNS[rng.integers(len(BASS_PATTERNS))]
    low = 28 + int(rng.integers(0, 8))  # lowest root: E1..B1
    rolloff, cutoff = rng.uniform(1.0, 1.8), rng.uniform(220, 450)
    decay, bright_tau = rng.uniform(0.25, 0.8), rng.uniform(0.04, 0.12)
    out = np.zeros(n)
    for bar in range(song.n_bars):
        for onset, length, interval in pattern:
            beat = bar * song.beats_per_bar + onset
            if beat >= song.n_beats:
                continue
            chord = song.chord_pcs(beat)
            root = low + (chord[0] - low) % 12
            midi = root + (interval if interval != 7 else (chord[2] - chord[0]) % 12)  # chord's fifth
            if midi > 52:  # keep to E3 and below
                midi = root
            f0 = midi_to_hz(midi)
            k = np.arange(1, max_harmonics(f0, sr, 16) + 1)
            base = k**-rolloff
            dark = harmonic_table(base * lowpass_gain(k * f0, cutoff, 4))
            bright = harmonic_table(base * lowpass_gain(k * f0, 3 * cutoff, 2))
            n_hold, n_rel = int(length * song.beat_samples), int(0.03 * sr)
            t = np.arange(n_hold + n_rel) / sr
            phase = f0 * t
            tone = table_lookup(dark, phase)
            tone += (table_lookup(bright, phase) - tone) * np.exp(-t / bright_tau)
            env = envelope(n_hold, n_rel, sr, 0.004, decay, 0.35)
            add_at(out, song.sample_at(beat), rng.uniform(0.85, 1.0) * env * tone)
    return pan(out, rng.uniform(-0.05, 0.05))


# --------------------------------------------------------------------------------------------
# Other: chord pads and arpeggios
# --------------------------------------------------------------------------------------------
def voice_chord(pcs: tuple[int, ...], previous: list[int] | None, lo: int = 52) -> list[int]:
    """Close-position voicing of ``pcs`` above ``lo``: the inversion that moves least from the
    previous chord (voice leading keeps common tones, so pads change smoothly)."""
    candidates = []
    for inv in range(len(pcs)):
        order = pcs[inv:] + pcs[:inv]
        notes = [lo + (order[0] - lo) % 12]
        for pc in order[1:]:
            notes.append(notes[-1] + ((pc - notes[-1]) % 12 or 12))
        candidates.append(notes)
    if previous is None:
        return min(candidates, key=lambda c: abs(np.mean(c) - (lo + 8)))
    return min(candidates, key=lambda c: sum(min(abs(a - b) for b in previous) for a in c))


def _pad_spectrum(kind: str, k: np.ndarray) -> np.ndarray:
    """Harmonic amplitudes: sawtooth (1/k), square (odd 1/k, hollow) or a drawbar organ."""
    if kind == "saw":
        return 1.0 / k
    if kind == "square":
        return np.where(k % 2 == 1, 1.0 / k, 0.0)
    drawbars = {1: 1.0, 2: 0.7, 3: 0.5, 4: 0.35, 6: 0.2, 8: 0.15}
    return np.array([drawbars.get(int(i), 0.0) for i in k])


def render_other(song: Song, rng: np.random.Generator) -> np.ndarray:
    """Sustained chords plus, in most tracks, a plucked arpeggio.

    The pad plays every chord as a voice-led close voicing (with a 7th in some tracks); each voice
    is two oscillators detuned by a few cents, one mostly left and one mostly right (chorus-like
    width), low-passed saw / square / organ timbre with a slow attack and a release overlapping
    the next chord.  The arpeggio plays chord tones an octave up in 8ths or 16ths with an
    electric-piano-like pluck, ping-ponged across the stereo field.  A shared reverb glues them."""
    sr, n = song.sample_rate, song.n_samples
    kind = ("saw", "square", "organ")[rng.integers(3)]
    sevenths = rng.random() < 0.35
    cutoff, detune = rng.uniform(1200, 3500), rng.uniform(4, 12)
    attack, tremolo = rng.uniform(0.05, 0.4), rng.uniform(0.0, 0.15) if kind == "organ" else 0.0
    pad = np.zeros((n, 2))
    arp = np.zeros((n, 2))
    voicing = None
    has_arp = rng.random() < 0.65
    arp_div = 4 if song.bpm < 110 and rng.random() < 0.5 else 2  # notes per beat
    arp_order = ("up", "updown", "random")[rng.integers(3)]
    arp_width = rng.uniform(0.2, 0.5)
    arp_decay = rng.uniform(0.2, 0.5)
    for start, length in song.chord_spans():
        pcs = song.chord_pcs(start, seventh=sevenths)
        voicing = voice_chord(pcs, voicing)
        n_hold, n_rel = int(length * song.beat_samples), int(0.3 * sr)
        env = envelope(n_hold, n_rel, sr, attack, 1.0, 1.0)
        t = np.arange(n_hold + n_rel) / sr
        env *= 1.0 + tremolo * np.sin(2 * np.pi * 6.0 * t)
        for j, midi in enumerate(voicing):
            f0 = midi_to_hz(midi)
            k = np.arange(1, max_harmonics(f0 * 1.01, sr, 48) + 1)
            table = harmonic_table(_pad_spectrum(kind, k) * lowpass_gain(k * f0, cutoff))
            cents = detune * np.array([-1.0, 1.0]) / 1200
            left, right = (oscillator(table, f0 * 2**c, len(t), sr, rng.random()) for c in cents)
            voice = np.stack([left + 0.4 * right, right + 0.4 * left], axis=1)
            spread = (j / max(len(voicing) - 1, 1) - 0.5) * 0.4  # voices fanned across the field
            voice *= np.array([1 - spread, 1 + spread])
            add_at(pad, song.sample_at(start), env[:, None] * voice / len(voicing))
        if has_arp:
            tones = sorted(voicing) + [voicing[0] + 12]
            tones = [m + 12 for m in tones]
            if arp_order == "updown":
                tones = tones + tones[-2:0:-1]
            for i in range(int(length * arp_div)):
                beat = start + i / arp_div
                if beat >= song.n_beats:
                    break
                midi = tones[i % len(tones)] if arp_order != "random" else int(rng.choice(tones))
                f0 = midi_to_hz(midi)
                k = np.arange(1, max_harmonics(f0, sr, 6) + 1)
                amps = np.array([1.0, 0.35, 0.15, 0.08, 0.04, 0.02])[: len(k)]
                n_hold, n_rel = int(song.beat_samples / arp_div), int(0.08 * sr)
                t = np.arange(n_hold + n_rel) / sr
                phase = f0 * t
                tone = table_lookup(harmonic_table(amps[:1]), phase)
                tone += (table_lookup(harmonic_table(amps), phase) - tone) * np.exp(-t / 0.05)
                env = envelope(n_hold, n_rel, sr, 0.002, arp_decay, 0.0)
                side = arp_width * (1 if i % 2 else -1)
                add_at(arp, song.sample_at(beat), pan(env * tone * rng.uniform(0.7, 1.0), side))
    if has_arp:
        pad = pad / (np.sqrt(np.mean(pad**2)) + 1e-12)
        arp = arp / (np.sqrt(np.mean(arp**2)) + 1e-12) * rng.uniform(0.5, 1.0)
    ir = reverb_ir(rng, sr, rng.uniform(0.8, 1.6))
    return add_reverb(pad + arp, ir, rng.uniform(0.15, 0.35))


# --------------------------------------------------------------------------------------------
# Vocals: a source-filter singing synthesiser
# --------------------------------------------------------------------------------------------
#: Vowel formants F1, F2, F3 in Hz (adult male averages, Peterson & Barney 1952).
VOWELS = {
    "a": (730, 1090, 2440),
    "e": (530, 1840, 2480),
    "i": (270, 2290, 3010),
    "o": (570, 840, 2410),
    "u": (300, 870, 2240),
}
VOWEL_WEIGHTS = (0.3, 0.2, 0.2, 0.18, 0.12)
#: F4, F5 (vowel independent) and the bandwidths of F1..F5 in Hz.
HIGH_FORMANTS = (3400.0, 4400.0)
FORMANT_BANDWIDTHS = np.array([80.0, 90.0, 120.0, 180.0, 250.0])
#: Unvoiced consonants: noise band (Hz), burst length (s), level re the vowel, closure before (s).
#: Fricatives (s, sh) are long hisses; plosives (t, k) a silent closure then a short burst.
CONSONANTS = {
    "s": ((4000, 10000), 0.10, 0.3, 0.0),
    "sh": ((1800, 5500), 0.11, 0.3, 0.0),
    "t": ((2500, 8000), 0.025, 0.5, 0.03),
    "k": ((1200, 3500), 0.035, 0.45, 0.035),
}


@dataclass(frozen=True)
class Note:
    """A sung syllable: consonant (or None) then vowel, on ``midi`` from ``start`` (beats)."""

    start: float
    length: float
    midi: int
    vowel: str
    consonant: str | None
    velocity: float
    legato: bool  # the next syllable follows without a rest


def _rhythm(rng: np.random.Generator, beats: float) -> list[float]:
    """Syllable lengths (beats) filling a phrase; the last note is long so it can bloom."""
    last = float(rng.choice([1.5, 2.0, 2.0, 3.0]))
    lengths, left = [], beats - last
    while left > 1e-9:
        d = float(rng.choice([x for x in (0.5, 0.5, 1.0, 1.0, 1.0, 1.5, 2.0) if x <= left + 1e-9]))
        lengths.append(d)
        left -= d
    return lengths + [last]


def compose_melody(song: Song, rng: np.random.Generator, lo: int, hi: int) -> list[Note]:
    """Phrases of 4--8 beats separated by rests of 2--4 beats.  Two rhythm templates recur (as
    verses repeat); pitches move mostly by step in the key, landing on chord tones on the beat and
    at phrase ends.  Each syllable gets a vowel and, often, an unvoiced consonant onset."""
    scale = song.scale_notes(lo, hi)
    centre = (lo + hi) / 2
    idx = int(np.argmin(np.abs(scale - centre)))
    templates = [_rhythm(rng, float(rng.choice([4, 6, 8]))) for _ in range(2)]
    notes: list[Note] = []
    beat, phrase = float(rng.choice([0.0, 0.5, 1.0])), 0
    while beat < song.n_beats or not notes:
        rhythm = templates[phrase % 2] if rng.random() < 0.75 else _rhythm(rng, float(rng.choice([4, 6, 8])))
        for i, length in enumerate(rhythm):
            step = int(rng.choice([-2, -1, -1, 0, 1, 1, 2]))
            if scale[idx] > centre + 5:
                step = -abs(step)
            elif scale[idx] < centre - 5:
                step = abs(step)
            idx = int(np.clip(idx + step, 0, len(scale) - 1))
            last = i == len(rhythm) - 1
            if last or beat % 1 == 0:  # land on a chord tone
                chord = song.chord_pcs(beat)
                tones = np.flatnonzero(np.isin(scale % 12, chord))
                idx = int(tones[np.argmin(np.abs(tones - idx) + 0.1 * rng.random(len(tones)))])
            consonant = None
            if rng.random() < 0.55:
                consonant = ("s", "sh", "t", "k")[rng.choice(4, p=(0.3, 0.15, 0.3, 0.25))]
            vowel = "aeiou"[rng.choice(5, p=VOWEL_WEIGHTS)]
            velocity = (1.0 if beat % 2 == 0 else 0.85) * rng.uniform(0.85, 1.0)
            notes.append(Note(beat, length, int(scale[idx]), vowel, consonant, velocity, not last))
            beat += length
        beat += float(rng.choice([2.0, 2.0, 2.5, 3.0, 4.0]))
        phrase += 1
    return notes


def glottal_table(open_quotient: float, n_harmonics: int) -> np.ndarray:
    """One period of the Rosenberg (1971) glottal flow pulse, differentiated (lip radiation),
    truncated to ``n_harmonics`` harmonics so the source stays below Nyquist.  Its spectrum falls
    off at about -6 dB/octave -- the natural spectral tilt of a voice."""
    x = np.arange(TABLE_SIZE) / TABLE_SIZE
    tp, tn = 0.6 * open_quotient, 0.4 * open_quotient
    flow = np.where(x < tp, 0.5 * (1 - np.cos(np.pi * x / tp)),
                    np.where(x < tp + tn, np.cos(np.pi * (x - tp) / (2 * tn)), 0.0))
    spectrum = np.fft.rfft(flow - np.roll(flow, 1))
    spectrum[0] = 0.0
    spectrum[n_harmonics + 1 :] = 0.0
    table = np.fft.irfft(spectrum, TABLE_SIZE)
    return table / np.abs(table).max()


def formant_response(freqs: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Magnitude of a cascade of second-order resonators (Klatt-style cascade formant filter):
    ``prod_i F_i^2 / sqrt((F_i^2 - f^2)^2 + (B_i f)^2)``, unit gain at DC.
    ``freqs``: (bins,), ``formants``: (frames, n_formants) -> (bins, frames)."""
    f2 = (freqs.astype(np.float32) ** 2)[:, None]
    power = np.ones((len(freqs), len(formants)), dtype=np.float32)
    for F, B in zip(formants.T.astype(np.float32), np.asarray(bandwidths, dtype=np.float32)):
        F2 = F[None, :] ** 2
        power *= F2**2 / ((F2 - f2) ** 2 + f2 * B**2)
    return np.sqrt(power)


def render_vocals(song: Song, rng: np.random.Generator) -> np.ndarray:
    """Sing a melody with a source-filter voice.

    * Pitch: the note sequence, smoothed into glides (40--80 ms portamento), with scoops into
      some notes (start up to 80 cents flat), vibrato (5--6 Hz, 10--45 cents, fading in after the
      onset of each note, with a slight amplitude tremolo) and a slow random drift of a few cents.
    * Source: a band-limited glottal pulse table read at that pitch, plus a little aspiration
      noise, gated by a voicing envelope (per-syllable dynamics, 20 ms ramps, gaps for consonants,
      silence in rests).
    * Filter: vowel formants F1--F3 (scaled for a lower or higher voice, smoothly interpolated
      between syllables for coarticulation) and fixed F4/F5, applied as a time-varying cascade
      resonator response in the STFT domain.
    * Consonants: band-passed noise bursts (s, sh, t, k) just before the vowels they precede.
    * A short stereo reverb, panned near the centre.
    """
    sr, n = song.sample_rate, song.n_samples
    high = rng.random() < 0.5
    lo, hi = (58, 76) if high else (50, 67)  # Bb3-E5 or D3-G4
    formant_scale = rng.uniform(1.1, 1.18) if high else rng.uniform(0.97, 1.05)
    notes = compose_melody(song, rng, lo, hi)
    starts = np.array([song.sample_at(x.start) for x in notes])
    note_of = np.clip(np.searchsorted(starts, np.arange(n), side="right") - 1, 0, None)
    since = (np.arange(n) - starts[note_of]) / sr  # seconds since the current note's onset
    t = np.arange(n) / sr

    # Pitch contour (semitones).
    midi = np.array([x.midi for x in notes], dtype=np.float64)
    pitch = smooth(midi[note_of], rng.uniform(0.02, 0.04) * sr)
    scoop = np.where(rng.random(len(notes)) < 0.3, rng.uniform(0.3, 0.8, len(notes)), 0.0)
    pitch -= scoop[note_of] * np.exp(-since / 0.05)
    vib_rate, vib_depth = rng.uniform(5.0, 6.0), rng.uniform(0.1, 0.45)
    vib_onset = np.clip((since - rng.uniform(0.12, 0.25)) / 0.25, 0.0, 1.0)
    vib_phase = 2 * np.pi * np.cumsum(vib_rate * (1 + 0.03 * slow_noise(rng, n, 0.3 * sr))) / sr
    vibrato = np.sin(vib_phase + rng.uniform(0, 2 * np.pi)) * vib_onset
    pitch += vib_depth * vibrato + 0.05 * slow_noise(rng, n, 0.15 * sr)
    f0 = midi_to_hz(pitch)

    # Voicing gate: syllable velocity while the vowel sounds, gaps for the next consonant.
    gate = np.zeros(n)
    for i, note in enumerate(notes):
        s0 = starts[i]
        end = s0 + int(note.length * song.beat_samples * (1.0 if note.legato else 0.92))
        if note.legato and notes[i + 1].consonant:
            _, dur, _, closure = CONSONANTS[notes[i + 1].consonant]
            end = starts[i + 1] - int((dur + closure) * sr)
        gate[s0 : max(end, s0 + int(0.05 * sr))] = note.velocity
    gate = smooth(gate, 0.01 * sr) * (1 + 0.1 * vibrato * vib_depth / 0.45)

    # Glottal source + aspiration.
    phase = np.cumsum(f0) / sr + rng.random()
    table = glottal_table(rng.uniform(0.5, 0.7), max_harmonics(midi_to_hz(hi + 1.5), sr, 200))
    source = table_lookup(table, phase)
    source += rng.uniform(0.02, 0.06) * rng.standard_normal(n) * (0.6 + 0.4 * np.cos(2 * np.pi * phase))
    source *= gate

    # Time-varying formant filter in the STFT domain.
    nperseg = 1024 if sr >= 32000 else 512
    noverlap = 3 * nperseg // 4
    freqs, times, spec = signal.stft(source, fs=sr, nperseg=nperseg, noverlap=noverlap)
    frame_note = note_of[np.clip((times * sr).astype(np.int64), 0, n - 1)]
    vowel_formants = np.array([VOWELS[x.vowel] for x in notes], dtype=np.float64)[frame_note]
    frames_per_30ms = 0.03 * sr / (nperseg - noverlap)
    vowel_formants = np.stack([smooth(c, frames_per_30ms) for c in vowel_formants.T], axis=1)
    formants = np.concatenate(
        [vowel_formants, np.broadcast_to(HIGH_FORMANTS, (len(times), 2))], axis=1) * formant_scale
    sounding = np.abs(spec).max(axis=0) > 0  # rests stay silent; skip their frames
    spec[:, sounding] *= formant_response(freqs, formants[sounding], FORMANT_BANDWIDTHS * formant_scale)
    voiced = signal.istft(spec, fs=sr, nperseg=nperseg, noverlap=noverlap)[1][:n]
    voiced = np.pad(voiced, (0, n - len(voiced)))
    active = gate > 0.5
    if active.any():
        voiced /= np.sqrt(np.mean(voiced[active] ** 2)) + 1e-12

    # Unvoiced consonants just before their vowels.
    mono = voiced
    for name, (band, dur, level, _) in CONSONANTS.items():
        onsets = [starts[i] for i, x in enumerate(notes) if x.consonant == name]
        if not onsets:
            continue
        m = int(dur * sr)
        u = np.arange(m) / m
        if name in ("s", "sh"):  # fricatives swell and fade
            shape = np.sin(np.pi * u) ** 0.7
        else:  # plosive bursts: sharp release, fast decay
            shape = np.exp(-5 * u) * np.minimum(u * m / (0.001 * sr), 1.0)
        env = np.zeros(n)
        for s0 in onsets:
            add_at(env, s0 - m, shape)
        mono = mono + level * env * filtered_noise(rng, n, sr, *band)

    stereo = pan(mono, rng.uniform(-0.1, 0.1))
    ir = reverb_ir(rng, sr, rng.uniform(0.4, 0.9), predelay=rng.uniform(0.01, 0.04))
    return add_reverb(stereo, ir, rng.uniform(0.1, 0.25))


# --------------------------------------------------------------------------------------------
# Mix
# --------------------------------------------------------------------------------------------
def energy(x: np.ndarray) -> float:
    return float(np.sum(np.asarray(x, dtype=np.float64) ** 2))


def mix_stems(stems: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Balance the stems like a mix engineer would, per track: drums as the reference, bass
    -3..+1 dB and other -4..0 dB re drums (RMS), then the vocals set to a vocals-to-accompaniment
    energy ratio drawn from -3..+1 dB (audible but not dominant).  All stems are then scaled by one
    factor so the loudest of the mixture and the stems peaks at -2..-0.5 dBFS.  Returns float32
    stems and ``mixture`` = their float32 sum."""
    def unit(x):
        return x / (np.sqrt(np.mean(x**2)) + 1e-12)

    gains_db = {"drums": 0.0, "bass": rng.uniform(-3, 1), "other": rng.uniform(-4, 0)}
    out = {name: unit(stems[name]) * 10 ** (g / 20) for name, g in gains_db.items()}
    accompaniment = out["drums"] + out["bass"] + out["other"]
    ratio_db = rng.uniform(-3, 1)
    e_vocals = energy(stems["vocals"])
    scale = np.sqrt(energy(accompaniment) * 10 ** (ratio_db / 10) / e_vocals) if e_vocals > 0 else 0.0
    out["vocals"] = stems["vocals"] * scale
    mixture = sum(out[s] for s in STEMS)
    peak = max(np.abs(x).max() for x in [mixture, *out.values()])
    gain = 10 ** (rng.uniform(-2, -0.5) / 20) / peak
    result = {s: (out[s] * gain).astype(np.float32) for s in STEMS}
    result["mixture"] = ((result["vocals"] + result["drums"]) + result["bass"]) + result["other"]
    return result
