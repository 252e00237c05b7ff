"""Modality encoders that turn raw media into LLM-width tokens."""

from .audio import (
    AudioEncoder,
    AudioEncoderConfig,
    QFormerConfig,
    WhisperTrunkConfig,
    official_audio_key,
    tiny_audio_encoder_config,
    to_official_audio_key,
    validate_audio,
)

__all__ = [
    "AudioEncoder",
    "AudioEncoderConfig",
    "QFormerConfig",
    "WhisperTrunkConfig",
    "official_audio_key",
    "tiny_audio_encoder_config",
    "to_official_audio_key",
    "validate_audio",
]
