//! Which member of the tiny-autoencoder family (`model.autoencoder`): the published weight sets
//! differ only in the latent's channel count and, for `taef2`, a GroupNorm branch in the
//! 1/8-scale blocks (docs/AUTOENCODER.md). Part of the config because it fixes the DiT's shape.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Error};

/// A published tiny autoencoder, named after its weight files (`taef2_encoder.pth`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Stable Diffusion 1.x/2.x latents.
    Taesd,
    /// Stable Diffusion XL latents.
    Taesdxl,
    /// Stable Diffusion 3 latents.
    Taesd3,
    /// FLUX.1 latents.
    Taef1,
    /// FLUX.2 latents.
    Taef2,
}

impl Variant {
    /// Every variant, in the order error messages list them.
    pub const ALL: [Variant; 5] = [Self::Taesd, Self::Taesdxl, Self::Taesd3, Self::Taef1, Self::Taef2];

    /// The name the weight files carry.
    pub fn name(self) -> &'static str {
        match self {
            Self::Taesd => "taesd",
            Self::Taesdxl => "taesdxl",
            Self::Taesd3 => "taesd3",
            Self::Taef1 => "taef1",
            Self::Taef2 => "taef2",
        }
    }

    /// Channels of the latent (the encoder's output, the decoder's input).
    pub fn latent_channels(self) -> i64 {
        match self {
            Self::Taesd | Self::Taesdxl => 4,
            Self::Taesd3 | Self::Taef1 => 16,
            Self::Taef2 => 32,
        }
    }

    /// Whether the blocks at 1/8 scale carry the GroupNorm branch (`block.rs`).
    pub fn midblock_gn(self) -> bool {
        self == Self::Taef2
    }

    /// The variant called `name` (exact, lower case).
    pub fn from_name(name: &str) -> anyhow::Result<Self> {
        match Self::ALL.into_iter().find(|v| v.name() == name) {
            Some(v) => Ok(v),
            None => {
                let valid: Vec<&str> = Self::ALL.iter().map(|v| v.name()).collect();
                bail!("unknown autoencoder variant {name:?}; valid: {}", valid.join(", "))
            }
        }
    }
}

impl FromStr for Variant {
    type Err = Error;
    fn from_str(name: &str) -> anyhow::Result<Self> {
        Self::from_name(name)
    }
}

impl Variant {
    /// Side ratio of image to latent (every variant downsamples by 8).
    pub const FACTOR: i64 = 8;
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `model.autoencoder` in JSON: a variant's name, or `"none"` (also the meaning of a missing
/// field) for the original's pixel space.
pub(super) mod option {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    use super::Variant;

    pub fn serialize<S: Serializer>(value: &Option<Variant>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value.map_or("none", Variant::name))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Variant>, D::Error> {
        match String::deserialize(d)?.as_str() {
            "none" => Ok(None),
            name => Variant::from_name(name).map(Some).map_err(|e| D::Error::custom(format!("{e}, or none"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_variant() {
        for v in Variant::ALL {
            assert_eq!(v.name().parse::<Variant>().unwrap(), v);
            assert_eq!(v.to_string(), v.name());
        }
    }

    #[test]
    fn an_unknown_name_is_refused_on_one_line_listing_the_valid_ones() {
        let err = Variant::from_name("TAEF2").unwrap_err().to_string();
        assert_eq!(
            err,
            r#"unknown autoencoder variant "TAEF2"; valid: taesd, taesdxl, taesd3, taef1, taef2"#
        );
    }

    #[test]
    fn only_taef2_has_the_groupnorm_branch() {
        let with: Vec<Variant> = Variant::ALL.into_iter().filter(|v| v.midblock_gn()).collect();
        assert_eq!(with, [Variant::Taef2]);
        let channels: Vec<i64> = Variant::ALL.iter().map(|v| v.latent_channels()).collect();
        assert_eq!(channels, [4, 4, 16, 16, 32]);
    }
}
