"""PhotonicDevice: an emulated programmable photonic matrix processor of Mach-Zehnder meshes.

``photonic:0`` is an N-port (``?N=64``) processor in the architecture of Shen et al. (Nat. Photonics 11,
441 (2017)): a weight W = U diag(s) V* is set as phases on a mesh for V*, a column of MZI attenuators for
diag(s) and a mesh for U (``processor.PhotonicMatrix``); meshes are Clements rectangles (``?mesh=reck`` for
Reck triangles). ``prepare`` *programs* the phases; a call streams input vectors through modulators, the
light through the programmed (imperfect) meshes, and reads the outputs with coherent detection, noise and
ADCs. ``?channels=8`` wavelengths carry 8 vectors at once (WDM: the batch rides on wavelengths).

Ops (coherent detection): ``linear`` (activation none, or relu applied electronically after the ADC, as
opto-electronic processors do; the bias is added digitally) and ``matmul(a, b)``, where ``b`` is the matrix
written to the meshes on every call (its heater settling time is charged per call). With
``?detection=intensity`` the detectors read |W x|^2, which is not a linear op: the device then offers the
paradigm op ``intensity_linear`` (x -> |W x|^2 per output) instead.

Switches: ``?phase_bits=12`` (0: continuous), ``crosstalk``, ``fabrication``, ``loss``, ``balanced_loss``, ``noise``,
``dispersion``, ``?adc_bits=8`` (0: none), ``?snr_db=50``, ``?ideal=1`` (all off). ``?seed=`` fixes the
chip's coupler errors and the noise stream; ``manual_seed`` restarts the noise stream. ``?compute=cuda``
runs the simulation on the GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch

from hal.capability import Capabilities, Figure, OpSupport, Paradigm
from hal.capability.photonic import MeshLayout, PhotonicSection, Readout
from hal.device import Check, Cost, Device, DeviceInfo, OpSpec, Option, Program, Support, bounded_int, choice, parse_bool
from hal.drivers.photonic.energy import EnergyConfig, call_cost
from hal.drivers.photonic.imperfections import PhotonicConfig, db_to_amplitude
from hal.drivers.photonic.processor import Fabrication, PhotonicMatrix
from hal.drivers.photonic.readout import Receiver
from hal.errors import DeviceUnavailable, InvalidInput

DTYPES = ("float32", "float64")
COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}
#: Declared tolerance = margin * worst measured relative error + a rounding floor per dtype.
TOLERANCE_MARGIN = 2.0
TOLERANCE_FLOOR = {"float32": 2e-5, "float64": 1e-11}
#: Input vectors used to measure a program's error at programming time (private noise stream).
PROBE_VECTORS = 64
SHEN = "Shen et al., Nat. Photonics 11, 441 (2017): SVD onto two MZI meshes and an attenuator column"


def _ports(text: str) -> int:
    value = int(text)
    if not 2 <= value <= 512:
        raise ValueError("must be between 2 and 512 ports")
    return value


def _bits(text: str) -> int | None:
    value = int(text)
    if not 0 <= value <= 32:
        raise ValueError("must be 0 (no quantisation) to 32 bits")
    return value or None


def _snr(text: str) -> float:
    value = float(text)
    if not 0 < value < 200:
        raise ValueError("must be a number of dB in (0, 200)")
    return value


class PhotonicProgram(Program):
    """Phases written to the processor for one op; ``matrix`` is the programmed weight (None for matmul, whose b comes per call).

    ``scale`` lists, per tile, the factor s_max by which the optics' W / s_max is multiplied back after
    detection; ``stats`` also counts clipped ADC readings and holds the measured matrix error.
    """

    def __init__(self, op: OpSpec, device: PhotonicDevice, cost: Cost, run: Callable[..., Any], matrix: PhotonicMatrix | None):
        super().__init__(op, device, cost, run)
        self.matrix = matrix

    @property
    def stats(self) -> dict:
        return self.matrix.stats.as_dict() if self.matrix is not None else {}

    @property
    def scale(self) -> list[float]:
        return self.matrix.stats.scale if self.matrix is not None else []


class PhotonicDevice(Device):
    """An emulated N-port photonic matrix processor (simulated; always available)."""

    kind = "photonic"
    refuses_nonfinite = True
    OPTIONS: ClassVar[dict[str, Option]] = {
        "N": Option(_ports, 64, "the mesh size in ports (2..512)"),
        "mesh": Option(choice({"clements": "clements", "reck": "reck"}), "clements", "the mesh layout: clements (rectangular) or reck (triangular)"),
        "detection": Option(choice({"coherent": "coherent", "intensity": "intensity"}), "coherent", "coherent (signed amplitudes) or intensity (|E|^2) detection"),
        "phase_bits": Option(_bits, 12, "phase-shifter DAC bits (0: continuous phases)"),
        "adc_bits": Option(_bits, 8, "ADC bits per output (0: no ADC quantisation)"),
        "snr_db": Option(_snr, 50.0, "required amplitude SNR at a detector for a full-scale output, in dB (sets the laser power)"),
        "channels": Option(bounded_int(1), 8, "WDM wavelength channels processed in parallel"),
        "max_tiles": Option(bounded_int(1), 64, "the most N x N tiles one weight may be cut into"),
        "crosstalk": Option(parse_bool, True, "thermal crosstalk between neighbouring heaters (1/0)"),
        "fabrication": Option(parse_bool, True, "coupler splitting errors of the chip (1/0)"),
        "loss": Option(parse_bool, True, "insertion loss per MZI and per idle crossing (1/0)"),
        "balanced_loss": Option(parse_bool, False, "give idle crossings a dummy loss equal to an MZI's, so every path loses the same (1/0)"),
        "noise": Option(parse_bool, True, "detector shot and thermal noise (1/0)"),
        "dispersion": Option(parse_bool, True, "wavelength dependence of heater phases across WDM channels (1/0)"),
        "ideal": Option(parse_bool, False, "switch every non-ideality off (exact mesh arithmetic, one wavelength)"),
        "seed": Option(int, 0, "seed of the chip's fabrication errors and of the detector noise stream"),
        "compute": Option(choice({"cpu": "cpu", "cuda": "cuda"}), "cpu", "where the simulation runs: cpu or cuda"),
    }
    #: Measured declared tolerances per configuration (measuring builds a few programs; reopened devices reuse it).
    _measured: ClassVar[dict[tuple, dict[str, float]]] = {}

    def __init__(self, uri):
        super().__init__(uri)
        if not isinstance(self.index, int):
            raise DeviceUnavailable(str(self.uri), "photonic devices are numbered (photonic:0, photonic:1, ...)", "use 'photonic:0'")
        if self.options["compute"] == "cuda":
            if not torch.cuda.is_available():
                raise DeviceUnavailable(str(self.uri), "?compute=cuda was asked for but torch sees no CUDA device", "drop ?compute=cuda or install a CUDA build of torch")
            self.torch_device = torch.device("cuda", torch.cuda.current_device())
        self.ports: int = self.options["N"]
        self.layout: str = self.options["mesh"]
        self.config = self._config()
        self.energy = EnergyConfig()
        self.receiver = Receiver(self.config.detector, self.config.noise_on)
        self.fabrication = Fabrication.draw(self.ports, self.config.coupler.splitting_error_rad, self.options["seed"])
        self._noise = torch.Generator(device=self.torch_device).manual_seed(self.options["seed"])
        self._last_cost = None
        self._clipped = 0

    def _config(self) -> PhotonicConfig:
        o = self.options
        if o["ideal"]:
            return PhotonicConfig.ideal(o["detection"])
        base = PhotonicConfig()
        if o["balanced_loss"]:
            base = replace(base, loss=replace(base.loss, crossing_loss_db=base.loss.mzi_loss_db))
        return replace(
            base,
            phase=replace(base.phase, dac_bits=o["phase_bits"]),
            detector=replace(base.detector, detection=o["detection"], adc_bits=o["adc_bits"], snr_db=o["snr_db"]),
            wdm=replace(base.wdm, channels=o["channels"]),
            quantisation_on=o["phase_bits"] is not None,
            crosstalk_on=o["crosstalk"],
            fabrication_on=o["fabrication"],
            loss_on=o["loss"],
            noise_on=o["noise"],
            dispersion_on=o["dispersion"],
        )

    # ---- discovery
    @classmethod
    def probe(cls) -> list[DeviceInfo]:
        return [
            DeviceInfo(
                uri="photonic:0",
                kind="photonic",
                available=True,
                simulated=True,
                paradigm=Paradigm.PHOTONIC.value,
                summary={"name": "emulated MZI-mesh photonic processor", "ports": cls.OPTIONS["N"].default, "layout": "clements", "wavelength_channels": cls.OPTIONS["channels"].default},
            )
        ]

    @classmethod
    def diagnose(cls) -> list[Check]:
        cuda = torch.cuda.is_available()
        return [
            Check("photonic emulator", True, f"pure torch {torch.__version__}; complex64/complex128 simulation on the CPU"),
            Check("photonic on CUDA", cuda, "torch sees a CUDA device: ?compute=cuda runs the mesh simulation there" if cuda else "no CUDA device; ?compute=cuda is unavailable", "" if cuda else "install a CUDA build of torch on a GPU machine"),
        ]

    # ---- capabilities
    def _ops(self) -> tuple[str, ...]:
        return ("intensity_linear",) if self.config.detector.detection == "intensity" else ("linear", "matmul")

    def _build_capabilities(self) -> Capabilities:
        tolerance = self._tolerance()
        limits = {"mesh_ports": self.ports, "max_tiles": self.options["max_tiles"]}
        notes = {
            "linear": "weight programmed once as mesh phases; bias added and relu applied electronically after the ADC",
            "matmul": "b is written to the meshes on every call (heater settling charged per call); b must be 2-D",
            "intensity_linear": "x -> |W x|^2 per output (square-law detection); one tile (weights up to N x N)",
        }
        ops = {name: OpSupport(DTYPES, tolerance, limits, notes[name]) for name in self._ops()}
        return Capabilities(
            uri=str(self.uri),
            kind=self.kind,
            paradigm=Paradigm.PHOTONIC,
            simulated=True,
            identity={"name": "emulated MZI-mesh photonic processor", "architecture": SHEN, "layout": self.layout, "compute": str(self.torch_device), "torch": torch.__version__},
            ops=ops,
            deterministic=not self.config.noise_on,
            memory_bytes=None,
            peak={"mac_per_s": self._peak_macs()},
            energy=self._energy_figures(),
            sections={"photonic": self._section(tolerance)},
            notes=[
                "NaN/inf inputs and weights are refused (they cannot be encoded on modulators or heaters).",
                "Each weight's largest singular value is mapped to full attenuator transmission; the scale is multiplied back after detection and reported in Program.scale / Program.stats.",
                "Weights larger than N x N are cut into N x N tiles, programmed one after another per call; partial results are summed after detection.",
                "Inputs are encoded per vector (x / max|x|) and rescaled digitally; the readout's one-scalar gain/phase calibration per wavelength removes the mesh's common loss and phase only.",
            ],
        )

    def _peak_macs(self) -> Figure:
        c = self.config
        value = self.ports**2 * c.detector.sample_rate_hz * c.wdm.channels
        return Figure.derived(value, "MAC/s", "ports^2 * sample_rate * wavelength channels", f"{self.ports}^2 x {c.detector.sample_rate_hz:.3g} S/s x {c.wdm.channels}")

    def _energy_figures(self) -> dict[str, Figure]:
        e, p = self.energy, self.config.phase
        return {
            "heater_p_pi_w": Figure.paper(p.p_pi_w, "W", "Harris et al., Opt. Express 22, 10487 (2014)", "holding power per pi of phase"),
            "modulator_j_per_sample": Figure.paper(e.modulator_energy_j, "J", "Baehr-Jones et al., Opt. Express 20, 12014 (2012), 200 fJ/bit"),
            "receiver_j_per_sample": Figure.paper(e.receiver_energy_j, "J", "Kim et al., IEEE JSSC 55 (2020), coherent receiver 450 fJ/bit"),
            "adc_j_per_conversion": Figure.derived(e.adc_fom_j_per_step * 2 ** (self.config.detector.adc_bits or 8), "J", "Walden FOM 50 fJ/step (Murmann ADC survey) * 2^adc_bits"),
            "laser_wall_plug_efficiency": Figure.paper(e.laser_wall_plug_efficiency, "1", "Srinivasan et al., IEEE Micro 33(1), 22 (2013), hybrid-silicon DFB order of magnitude"),
        }

    def _section(self, tolerance: dict[str, float]) -> PhotonicSection:
        c, n = self.config, self.ports
        depth = n if self.layout == "clements" else 2 * n - 3
        mzis = n * (n - 1) // 2
        d = c.detector
        settle = c.phase.settle_time_s
        propagation = (2 * depth + 1) * self.energy.column_length_m * self.energy.group_index / 299_792_458.0
        return PhotonicSection(
            architecture=SHEN,
            mesh=MeshLayout(ports=n, layout=self.layout, mzis=mzis, depth_columns=depth, phase_shifters=2 * mzis + n),
            meshes=2,
            wavelength_channels=Figure.paper(c.wdm.channels, "channels", "ITU-T G.694.1 100 GHz grid; Feldmann et al., Nature 589, 52 (2021)", f"spacing {c.wdm.spacing_nm} nm around {c.wdm.center_nm} nm"),
            readout=Readout(
                detection=d.detection,
                adc_bits=d.adc_bits,
                phase_dac_bits=c.phase.dac_bits if c.quantisation_on else None,
                snr_db=Figure.derived(d.snr_db, "dB", "required amplitude SNR at a detector for a full-scale output (option snr_db)"),
                signal_power_per_port=Figure.derived(self.receiver.signal_power_w, "W", "(2 q R P_LO B + i_n^2 B) / (4 R^2 P_LO sigma^2), sigma = 10^(-snr_db/20)" if d.detection == "coherent" else "root of sigma^2 (R P)^2 = 2 q R B P + i_n^2 B"),
                responsivity=Figure.paper(d.responsivity_a_per_w, "A/W", "Colace et al., Appl. Phys. Lett. 91, 021107 (2007), Ge on SOI at 1550 nm"),
                tia_noise_density=Figure.paper(d.tia_noise_a_per_rthz, "A/sqrt(Hz)", "Saeckinger, Broadband Circuits for Optical Fiber Communication (2005): 1.4 uA rms over ~7.5 GHz"),
                sample_rate=Figure.paper(d.sample_rate_hz, "S/s", "10 Gb/s modulator/receiver class (Baehr-Jones 2012; Kim et al. 2020)"),
            ),
            max_tiles=self.options["max_tiles"],
            nonidealities={
                "phase_quantisation": c.quantisation_on,
                "thermal_crosstalk": c.crosstalk_on,
                "coupler_error": c.fabrication_on,
                "insertion_loss": c.loss_on,
                "detector_noise": c.noise_on,
                "dispersion": c.dispersion_on,
                "adc_quantisation": d.adc_bits is not None,
            },
            physics={
                "p_pi": Figure.paper(c.phase.p_pi_w, "W", "Harris et al., Opt. Express 22, 10487 (2014)"),
                "heater_crosstalk": Figure.paper(c.phase.crosstalk, "1", "Milanizadeh et al., J. Lightwave Technol. 37, 1325 (2019)", "nearest-neighbour coupling before compensation"),
                "heater_crosstalk_residual": Figure.paper(c.phase.crosstalk_residual, "1", "Milanizadeh et al. 2019 (pre-compensation); 5 % calibration residual assumed"),
                "coupler_splitting_error": Figure.paper(c.coupler.splitting_error_rad, "rad", "Bandyopadhyay et al., Optica 8, 1247 (2021)", "std of the coupler angle around pi/4"),
                "mzi_loss": Figure.paper(c.loss.mzi_loss_db, "dB", "Harris et al. 2014: 0.23 dB heater plus couplers"),
                "crossing_loss": Figure.paper(c.loss.crossing_loss_db, "dB", "Bogaerts et al., Laser Photon. Rev. 6, 47 (2012): 2 dB/cm over a 150 um column"),
                "heater_settle_time": Figure.derived(settle, "s", "5 / (2 pi * 130 kHz thermal bandwidth, Harris et al. 2014)"),
                "propagation_latency": Figure.derived(propagation, "s", "(2 * depth + 1) columns * 150 um * group index 4.2 / c"),
                "mesh_power_transmission": Figure.derived(self._nominal_transmission(), "1", "10^(-(2 * depth + 1) * mzi_loss_db / 10)"),
                **{f"matrix_error_{k}": Figure.measured(v / TOLERANCE_MARGIN, "1", "relative Frobenius error of an N x N and a 8 x 16 weight on random inputs, worst of the two") for k, v in tolerance.items()},
            },
        )

    def _nominal_transmission(self) -> float:
        if not self.config.loss_on:
            return 1.0
        depth = self.ports if self.layout == "clements" else 2 * self.ports - 3
        return db_to_amplitude(self.config.loss.mzi_loss_db * (2 * depth + 1)) ** 2

    def _tolerance(self) -> dict[str, float]:
        """Measure this configuration's error on a full N x N weight and a small one; declare a margin over it."""
        key = (tuple(sorted(self.options.items())),)
        if key not in self._measured:
            measured = {}
            rng = np.random.default_rng(1234)
            for dtype_name in DTYPES:
                dtype = getattr(torch, dtype_name)
                worst = 0.0
                for rows, cols in ((self.ports, self.ports), (min(8, self.ports), min(16, self.ports))):
                    weight = rng.standard_normal((rows, cols))
                    matrix = PhotonicMatrix(weight, self.ports, self.layout, self.config, self.fabrication, COMPLEX[dtype], self.torch_device)
                    worst = max(worst, self._probe_error(matrix, weight, dtype))
                measured[dtype_name] = TOLERANCE_MARGIN * worst + TOLERANCE_FLOOR[dtype_name]
            self._measured[key] = measured
        return dict(self._measured[key])

    def _probe_error(self, matrix: PhotonicMatrix, weight: np.ndarray, dtype: torch.dtype) -> float:
        """Relative Frobenius error of ``matrix`` on random inputs, with a private noise stream (stats left untouched)."""
        generator = torch.Generator().manual_seed(99)
        x = torch.randn(PROBE_VECTORS, weight.shape[1], generator=generator, dtype=torch.float64)
        noise = torch.Generator(device=self.torch_device).manual_seed(99)
        saved = (matrix.stats.clipped_readings, matrix.stats.readings)
        out = matrix.apply(x.to(dtype), noise).to(torch.float64).cpu()
        matrix.stats.clipped_readings, matrix.stats.readings = saved
        ref = x @ torch.as_tensor(weight, dtype=torch.float64).T
        if self.config.detector.detection == "intensity":
            ref = ref**2
        return float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-300))

    # ---- support and estimates
    def _weight_shape(self, op: OpSpec) -> tuple[int, int]:
        """(rows, cols) of the matrix the meshes hold for ``op``."""
        if op.name == "matmul":
            b = op.inputs[1].shape
            return b[-1], b[-2]
        return op.param("weight").shape

    def _check(self, op: OpSpec) -> Support | None:
        if op.name == "matmul" and len(op.inputs[1].shape) != 2:
            return Support.no(f"{self.uri} holds one matrix per programming; matmul's b has shape {op.inputs[1].shape}. Pass a 2-D b (loop over the batch of b) or use linear")
        if op.name == "intensity_linear":
            problem = self._intensity_shape_problem(op)
            if problem:
                return Support.no(problem)
        rows, cols = self._weight_shape(op)
        if rows is None or cols is None:
            return Support.no(f"{self.uri} programs a matrix of known size; the weight's shape {(rows, cols)} is open")
        tiles = math.ceil(rows / self.ports) * math.ceil(cols / self.ports)
        limit = self.options["max_tiles"] if op.name != "intensity_linear" else 1
        if tiles > limit:
            n = self.ports
            fix = "pass a larger ?N= mesh" if op.name == "intensity_linear" else f"pass ?max_tiles={tiles} (each tile adds a {self.config.phase.settle_time_s * 1e6:.1f} us heater settling per call) or split the layer"
            return Support.no(f"{self.uri} programs one {n}x{n} tile at a time, at most {limit} per weight; this {rows}x{cols} matrix needs {tiles}. Fix: {fix}")
        return None

    @staticmethod
    def _intensity_shape_problem(op: OpSpec) -> str | None:
        if len(op.inputs) != 1:
            return f"intensity_linear takes one input x (..., in), got {len(op.inputs)}"
        weight = op.param("weight")
        if weight is None or len(weight.shape) != 2:
            return f"intensity_linear needs a 2-D 'weight' (out, in), got {None if weight is None else weight.shape}"
        x = op.inputs[0].shape
        if not x or x[-1] != weight.shape[1]:
            return f"intensity_linear: input has {x[-1] if x else 'no'} features but weight {weight.shape} expects {weight.shape[1]}"
        unknown = {k for k, _ in op.params} - {"weight"}
        if unknown:
            return f"intensity_linear has only a 'weight' parameter, not {sorted(unknown)}"
        return None

    def estimate(self, op: OpSpec) -> Cost:
        """Latency/energy from the cost model with average heater phases (pi each); error = this configuration's measured error."""
        rows, cols = self._weight_shape(op)
        rows, cols = rows or 1, cols or 1
        batch = _batch(op)
        n = self.ports
        row_tiles, col_tiles = math.ceil(rows / n), math.ceil(cols / n)
        tiles = row_tiles * col_tiles
        depth = n if self.layout == "clements" else 2 * n - 3
        heaters = 2 * n * n + 2 * n  # per mesh n(n-1)/2 MZIs x (theta, phi) + n output phases; n attenuators x (theta, phi)
        cost = call_cost(
            batch=batch,
            inputs=tiles * min(cols, n),
            outputs=tiles * min(rows, n),
            tiles=tiles,
            programmings=(tiles if op.name == "matmul" or tiles > 1 else 0),
            depth_columns=2 * depth + 1,
            heater_phase_sum_rad=heaters * math.pi,
            signal_power_w=self.receiver.signal_power_w,
            transmission=self._nominal_transmission(),
            config=self.config,
            energy=self.energy,
        )
        dtype = op.inputs[0].dtype if op.inputs else torch.float32
        error = self._tolerance().get(str(dtype).removeprefix("torch."), max(self._tolerance().values())) / TOLERANCE_MARGIN
        return Cost(cost.latency_s, cost.energy_j, error, cost.formula() + "; error = measured on random weights for this configuration")

    # ---- programs
    def _compile(self, op: OpSpec, params: dict[str, torch.Tensor]) -> Program:
        dtype = op.inputs[0].dtype
        if op.name == "matmul":
            return self._compile_matmul(op, dtype)
        weight = params["weight"].detach().to("cpu", torch.float64).numpy()
        matrix = PhotonicMatrix(weight, self.ports, self.layout, self.config, self.fabrication, COMPLEX[dtype], self.torch_device)
        bias = params.get("bias")
        bias = bias.detach().to(self.torch_device) if bias is not None else None
        relu = op.attr("activation") == "relu"
        error = self._probe_error(matrix, weight, dtype)

        def run(x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, x.shape[-1])
            y = matrix.apply(flat, self._noise)
            y = y.reshape(*x.shape[:-1], y.shape[-1])
            if bias is not None:
                y = y + bias
            return torch.relu(y) if relu else y

        cost = matrix.cost(_batch(op), matrix.tile_count if matrix.tile_count > 1 else 0, self.energy)
        self._last_cost = cost
        return PhotonicProgram(op, self, Cost(cost.latency_s, cost.energy_j, error, cost.formula() + f"; error measured on {PROBE_VECTORS} random inputs at programming"), run, matrix)

    def _compile_matmul(self, op: OpSpec, dtype: torch.dtype) -> Program:
        program: PhotonicProgram

        def run(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            weight = b.detach().to("cpu", torch.float64).numpy().T
            matrix = PhotonicMatrix(weight, self.ports, self.layout, self.config, self.fabrication, COMPLEX[dtype], self.torch_device)
            program.matrix = matrix
            flat = a.reshape(-1, a.shape[-1])
            y = matrix.apply(flat, self._noise)
            return y.reshape(*a.shape[:-1], y.shape[-1])

        program = PhotonicProgram(op, self, self.estimate(op), run, None)
        return program

    # ---- lifecycle
    def manual_seed(self, seed: int) -> None:
        """Restart the detector-noise stream (the chip's fabrication errors stay those of ``?seed=``)."""
        if not isinstance(seed, int):
            raise InvalidInput(f"manual_seed takes an int, got {type(seed).__name__}")
        self._noise.manual_seed(seed)

    def telemetry(self) -> dict[str, Any]:
        cost = self._last_cost
        return {
            "heater_power_w": cost.heater_power_w if cost else 0.0,
            "laser_power_w": cost.laser_power_w if cost else 0.0,
            "signal_power_per_port_w": self.receiver.signal_power_w,
        }


def _batch(op: OpSpec) -> int:
    """Vectors per call: the product of the leading dimensions of the streamed input (open ones count 1)."""
    shape = op.inputs[0].shape[:-1] if op.inputs else ()
    return math.prod(s or 1 for s in shape) if shape else 1
