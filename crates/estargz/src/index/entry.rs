//! TOC entries as the index builder reads them, and the streaming decode of
//! the TOC JSON that hands them over one at a time.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::build::Builder;
use crate::{Error, TocEntry};

/// One TOC entry, its strings borrowed from the JSON (or from a [`TocEntry`]).
/// Same fields and meaning as [`TocEntry`]; owner names are not read.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct EntryRef<'a> {
    #[serde(borrow, default)]
    pub name: Cow<'a, str>,
    #[serde(rename = "type", borrow, default)]
    pub kind: Cow<'a, str>,
    #[serde(default)]
    pub size: i64,
    #[serde(rename = "modtime", borrow, default)]
    pub mod_time: Cow<'a, str>,
    #[serde(rename = "linkName", borrow, default)]
    pub link_name: Cow<'a, str>,
    #[serde(default)]
    pub mode: i64,
    #[serde(default)]
    pub uid: i64,
    #[serde(default)]
    pub gid: i64,
    #[serde(default)]
    pub offset: i64,
    #[serde(rename = "innerOffset", default)]
    pub inner_offset: i64,
    #[serde(rename = "devMajor", default)]
    pub dev_major: i64,
    #[serde(rename = "devMinor", default)]
    pub dev_minor: i64,
    #[serde(default, deserialize_with = "xattrs_cow")]
    pub xattrs: Cow<'a, BTreeMap<String, Vec<u8>>>,
    #[serde(borrow, default)]
    pub digest: Cow<'a, str>,
    #[serde(rename = "chunkOffset", default)]
    pub chunk_offset: i64,
    #[serde(rename = "chunkSize", default)]
    pub chunk_size: i64,
    #[serde(rename = "chunkDigest", borrow, default)]
    pub chunk_digest: Cow<'a, str>,
}

fn xattrs_cow<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Cow<'static, BTreeMap<String, Vec<u8>>>, D::Error> {
    crate::toc::xattrs_de(d).map(Cow::Owned)
}

impl<'a> From<&'a TocEntry> for EntryRef<'a> {
    fn from(e: &'a TocEntry) -> Self {
        EntryRef {
            name: Cow::Borrowed(&e.name),
            kind: Cow::Borrowed(&e.kind),
            size: e.size,
            mod_time: Cow::Borrowed(&e.mod_time),
            link_name: Cow::Borrowed(&e.link_name),
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            offset: e.offset,
            inner_offset: e.inner_offset,
            dev_major: e.dev_major,
            dev_minor: e.dev_minor,
            xattrs: Cow::Borrowed(&e.xattrs),
            digest: Cow::Borrowed(&e.digest),
            chunk_offset: e.chunk_offset,
            chunk_size: e.chunk_size,
            chunk_digest: Cow::Borrowed(&e.chunk_digest),
        }
    }
}

/// Feeds every entry of the TOC JSON to `b`; returns the TOC's version.
/// A builder error stops the decode at once and is returned as is.
pub(crate) fn stream(json: &[u8], b: &mut Builder) -> Result<Option<u32>, Error> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let res = TocSeed { b: &mut *b }.deserialize(&mut de);
    if let Some(e) = b.take_error() {
        return Err(e);
    }
    let version = res.map_err(Error::TocJson)?;
    de.end().map_err(Error::TocJson)?;
    Ok(version)
}

/// The top-level object: `version` and `entries`, in any order.
struct TocSeed<'b> {
    b: &'b mut Builder,
}

impl<'de> DeserializeSeed<'de> for TocSeed<'_> {
    type Value = Option<u32>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<u32>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TocSeed<'_> {
    type Value = Option<u32>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOC object with \"version\" and \"entries\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u32>, A::Error> {
        let mut version = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "version" => version = Some(map.next_value::<u32>()?),
                "entries" => map.next_value_seed(EntriesSeed { b: &mut *self.b })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(version)
    }
}

/// `entries`: null, or an array handed over element by element.
struct EntriesSeed<'b> {
    b: &'b mut Builder,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of TOC entries")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(e) = seq.next_element::<EntryRef<'de>>()? {
            if let Err(err) = self.b.push(&e) {
                let msg = err.to_string();
                self.b.fail(err);
                return Err(serde::de::Error::custom(msg));
            }
        }
        Ok(())
    }
}
