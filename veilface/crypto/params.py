"""The CKKS parameter set of a Veilface deployment."""

from __future__ import annotations

from dataclasses import dataclass

#: Largest total coefficient-modulus size (bits) giving 128-bit classical security with a
#: ternary secret, from the Homomorphic Encryption Security Standard (2018), table 1.
HE_STANDARD_128_BIT_MAX = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


def is_power_of_two(value: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return value > 0 and value & (value - 1) == 0


@dataclass(frozen=True)
class CkksParams:
    """Ring degree, modulus chain and scale of the deployment.

    The chain ``(60, 40, 40, 60)`` gives three data levels plus the special (key-switching)
    prime: fresh ciphertexts live at ``[60, 40, 40]``, packed blocks at ``[60, 40]`` and score
    ciphertexts at ``[60]``. ``max_dim`` bounds the template dimension the Galois keys serve.
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = 40
    max_dim: int = 1024

    def __post_init__(self) -> None:
        limit = HE_STANDARD_128_BIT_MAX.get(self.poly_modulus_degree)
        if limit is None:
            raise ValueError(f"unsupported ring degree {self.poly_modulus_degree}")
        if sum(self.coeff_mod_bit_sizes) > limit:
            raise ValueError(f"{sum(self.coeff_mod_bit_sizes)} modulus bits exceed the 128-bit bound {limit}")
        if len(self.coeff_mod_bit_sizes) != 4:
            raise ValueError("the level plan needs three data primes and one special prime")
        if self.coeff_mod_bit_sizes[-1] < max(self.coeff_mod_bit_sizes[:-1]):
            raise ValueError("the special prime must be at least as large as every data prime")
        if not is_power_of_two(self.max_dim) or self.max_dim > self.slots:
            raise ValueError("max_dim must be a power of two no larger than the slot count")

    @property
    def slots(self) -> int:
        """Complex slots per ciphertext."""
        return self.poly_modulus_degree // 2

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    @property
    def block_capacity(self) -> int:
        """Templates per packed block: two per slot (real and imaginary lane)."""
        return 2 * self.slots

    @property
    def galois_steps(self) -> tuple[int, ...]:
        """Left-rotation steps with a Galois key: the powers of two below ``max_dim``."""
        return tuple(1 << k for k in range(self.max_dim.bit_length() - 1))

    def check_dim(self, dim: int) -> None:
        """Raise ValueError unless ``dim`` is a template dimension these keys can serve."""
        if not is_power_of_two(dim) or not 2 <= dim <= self.max_dim:
            raise ValueError(f"template dimension {dim} must be a power of two in [2, {self.max_dim}]")


#: The deployment's parameter set.
DEFAULT_PARAMS = CkksParams()
