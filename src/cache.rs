//! What BuildKit cache one image's build exports and imports (pure): a registry cache beside the
//! image (its `buildcache` tag, `buildcache-<arch>` for each platform of a multi-platform image),
//! or the inline cache in the image itself where the engine or the repository cannot keep one.

use crate::config::CacheMode;
use crate::reference::platform_parts;

/// The tag of an image's registry cache.
pub(crate) const CACHE_TAG: &str = "buildcache";

/// The registry cache's tag for one build: each platform of a multi-platform image has its own.
pub(crate) fn cache_tag(platform: Option<&str>, several_platforms: bool) -> String {
    match (platform, several_platforms) {
        (Some(platform), true) => {
            let (_, architecture, variant) = platform_parts(platform);
            match variant {
                Some(variant) => format!("{CACHE_TAG}-{architecture}-{variant}"),
                None => format!("{CACHE_TAG}-{architecture}"),
            }
        }
        _ => CACHE_TAG.to_owned(),
    }
}

/// Why an image that asked for a registry cache gets the inline cache only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// The engine keeps images in the classic image store, which cannot export a cache.
    ClassicStore,
    /// The cache repository's tag rules do not let its cache tag move.
    ImmutableTag,
}

/// The cache one build exports and imports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CacheChoice {
    /// The registry cache's mode (`max`, `min`), where one is exported to and imported from the
    /// cache tag.
    pub registry_mode: Option<&'static str>,
    /// The image carries its own cache metadata, so `cache_from` it reuses its layers on a
    /// fresh host. Kept beside a registry cache: the image is the same whatever the engine.
    pub inline: bool,
    pub fallback: Option<Fallback>,
}

/// `mode` as this build can have it. `can_export`: the engine can export a cache and the run
/// pushes; `tag_immutable`: the cache repository refuses to move the cache tag.
pub(crate) fn choose(mode: CacheMode, can_export: bool, tag_immutable: bool) -> CacheChoice {
    let registry_mode = match mode {
        CacheMode::Max => "max",
        CacheMode::Min => "min",
        CacheMode::Inline | CacheMode::Off => {
            return CacheChoice {
                registry_mode: None,
                inline: mode == CacheMode::Inline,
                fallback: None,
            };
        }
    };
    let fallback = match (can_export, tag_immutable) {
        (false, _) => Some(Fallback::ClassicStore),
        (true, true) => Some(Fallback::ImmutableTag),
        (true, false) => None,
    };
    CacheChoice {
        registry_mode: fallback.is_none().then_some(registry_mode),
        inline: true,
        fallback,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_platform_of_a_multi_platform_image_has_its_own_cache_tag() {
        assert_eq!(cache_tag(None, false), "buildcache");
        assert_eq!(cache_tag(Some("linux/arm64"), false), "buildcache");
        assert_eq!(cache_tag(Some("linux/arm64"), true), "buildcache-arm64");
        assert_eq!(cache_tag(Some("linux/amd64"), true), "buildcache-amd64");
        assert_eq!(cache_tag(Some("linux/arm/v7"), true), "buildcache-arm-v7");
    }

    #[test]
    fn a_registry_cache_where_it_can_be_kept_else_the_inline_cache_and_why() {
        let registry = |mode| CacheChoice {
            registry_mode: Some(mode),
            inline: true,
            fallback: None,
        };
        let inline_because = |fallback| CacheChoice {
            registry_mode: None,
            inline: true,
            fallback: Some(fallback),
        };
        assert_eq!(choose(CacheMode::Max, true, false), registry("max"));
        assert_eq!(choose(CacheMode::Min, true, false), registry("min"));
        assert_eq!(
            choose(CacheMode::Max, false, false),
            inline_because(Fallback::ClassicStore)
        );
        assert_eq!(
            choose(CacheMode::Min, false, true),
            inline_because(Fallback::ClassicStore)
        );
        assert_eq!(
            choose(CacheMode::Max, true, true),
            inline_because(Fallback::ImmutableTag)
        );
        for (can_export, immutable) in [(true, false), (false, true)] {
            let inline = choose(CacheMode::Inline, can_export, immutable);
            assert_eq!(
                (inline.registry_mode, inline.inline, inline.fallback),
                (None, true, None)
            );
            let off = choose(CacheMode::Off, can_export, immutable);
            assert_eq!(
                (off.registry_mode, off.inline, off.fallback),
                (None, false, None)
            );
        }
    }
}
