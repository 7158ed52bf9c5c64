//! The binary form of an environment's metadata in the memory file. A sync given every open PR
//! decodes the remembered metadata of each, to compare it with its PR; serde_json spent some
//! 15,000 instructions on each (a fifth of such a sync at 10,000 environments), this form about a
//! tenth of that. It is the memory's own: the repository's `prenv.json` stays JSON.
//!
//! Both directions name every field: [`encode`] takes the metadata apart with a pattern that lists
//! them all, and [`decode`] builds it with a struct literal, so a field added to [`EnvMeta`] does
//! not compile until it is written and read here too. Strings carry their length (u32), numbers
//! are little-endian, an instant is its seconds (i64) and nanoseconds (u32), an absent value is a
//! 0 byte and a present one a 1 byte before it.

use chrono::{DateTime, Utc};

use crate::model::config::Database;
use crate::model::meta::{EnvMeta, ImageWait, Queued};
use crate::model::naming::EnvName;

/// The metadata's bytes, appended to `out`; `None` when a string is longer than 4 GiB.
pub fn encode(meta: &EnvMeta, out: &mut Vec<u8>) -> Option<()> {
    let EnvMeta {
        generator,
        schema,
        env,
        namespace,
        pr,
        head_sha,
        head_ref,
        url,
        image,
        databases,
        created_at,
        closed_at,
        merged,
        preserve_until,
        render_digest,
        pr_updated_at,
        committed_at,
        project,
        eligible_at,
        waiting_for,
        queued,
    } = meta;
    let mut w = Writer(out);
    w.text(generator)?;
    w.0.extend_from_slice(&schema.to_le_bytes());
    w.text(env.as_str())?;
    w.text(namespace)?;
    w.0.extend_from_slice(&pr.to_le_bytes());
    w.text(head_sha)?;
    w.text(head_ref)?;
    w.text(url)?;
    w.text(image)?;
    w.0.push(u8::try_from(databases.len()).ok()?);
    for db in databases {
        w.0.push(match db {
            Database::Postgres => 0,
            Database::Mariadb => 1,
        });
    }
    w.instant(*created_at);
    w.maybe_instant(*closed_at);
    w.0.push(u8::from(*merged));
    w.maybe_instant(*preserve_until);
    w.text(render_digest)?;
    w.maybe_instant(*pr_updated_at);
    w.maybe_instant(*committed_at);
    match project {
        Some(p) => {
            w.0.push(1);
            w.text(p)?;
        }
        None => w.0.push(0),
    }
    w.maybe_instant(*eligible_at);
    match waiting_for {
        Some(ImageWait { sha, image, since }) => {
            w.0.push(1);
            w.text(sha)?;
            w.text(image)?;
            w.instant(*since);
        }
        None => w.0.push(0),
    }
    match queued {
        Some(Queued {
            queued_at,
            position,
            of,
        }) => {
            w.0.push(1);
            w.instant(*queued_at);
            w.0.extend_from_slice(&position.to_le_bytes());
            w.0.extend_from_slice(&of.to_le_bytes());
        }
        None => w.0.push(0),
    }
    Some(())
}

/// The metadata [`encode`] wrote into `bytes` (all of them), or what is wrong with them.
pub fn decode(bytes: &[u8]) -> Result<EnvMeta, String> {
    let mut r = Reader::new(bytes);
    let meta = EnvMeta {
        generator: r.text()?,
        schema: u32::from_le_bytes(r.array()?),
        env: EnvName::try_from(r.text()?).map_err(|e| e.to_string())?,
        namespace: r.text()?,
        pr: u64::from_le_bytes(r.array()?),
        head_sha: r.text()?,
        head_ref: r.text()?,
        url: r.text()?,
        image: r.text()?,
        databases: {
            let count = r.byte()?;
            (0..count)
                .map(|_| match r.byte()? {
                    0 => Ok(Database::Postgres),
                    1 => Ok(Database::Mariadb),
                    other => Err(format!(
                        "remembered metadata names database {other}, which prenv does not know"
                    )),
                })
                .collect::<Result<_, _>>()?
        },
        created_at: r.instant()?,
        closed_at: r.maybe_instant()?,
        merged: r.flag()?,
        preserve_until: r.maybe_instant()?,
        render_digest: r.text()?,
        pr_updated_at: r.maybe_instant()?,
        committed_at: r.maybe_instant()?,
        project: if r.flag()? { Some(r.text()?) } else { None },
        eligible_at: r.maybe_instant()?,
        waiting_for: if r.flag()? {
            Some(ImageWait {
                sha: r.text()?,
                image: r.text()?,
                since: r.instant()?,
            })
        } else {
            None
        },
        queued: if r.flag()? {
            Some(Queued {
                queued_at: r.instant()?,
                position: u32::from_le_bytes(r.array()?),
                of: u32::from_le_bytes(r.array()?),
            })
        } else {
            None
        },
    };
    if r.at != bytes.len() {
        return Err(format!(
            "remembered metadata has {} bytes after its last field",
            bytes.len() - r.at
        ));
    }
    Ok(meta)
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn text(&mut self, text: &str) -> Option<()> {
        self.0.extend_from_slice(&u32::try_from(text.len()).ok()?.to_le_bytes());
        self.0.extend_from_slice(text.as_bytes());
        Some(())
    }

    fn instant(&mut self, at: DateTime<Utc>) {
        self.0.extend_from_slice(&at.timestamp().to_le_bytes());
        self.0.extend_from_slice(&at.timestamp_subsec_nanos().to_le_bytes());
    }

    fn maybe_instant(&mut self, at: Option<DateTime<Utc>>) {
        match at {
            Some(at) => {
                self.0.push(1);
                self.instant(at);
            }
            None => self.0.push(0),
        }
    }
}

/// Reads fields off the front of a record (the memory's record envelope uses it too).
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    /// How many bytes have been read.
    pub(super) fn at(&self) -> usize {
        self.at
    }

    // Inlined, with the error built out of line: a read of 10,000 remembered environments takes
    // about 200,000 fields, and called they cost a tenth of reading the memory.
    #[inline]
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.bytes.len());
        let Some(end) = end else {
            return Err(cut_short(self.at));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    #[inline]
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let bytes = self.take(N)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    #[inline]
    pub(super) fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn flag(&mut self) -> Result<bool, String> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("remembered metadata has {other} where 0 or 1 belongs")),
        }
    }

    fn text(&mut self) -> Result<String, String> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        let at = self.at;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| format!("remembered metadata has a string at byte {at} that is not UTF-8"))
    }

    fn instant(&mut self) -> Result<DateTime<Utc>, String> {
        let secs = i64::from_le_bytes(self.array()?);
        let nanos = u32::from_le_bytes(self.array()?);
        DateTime::from_timestamp(secs, nanos)
            .ok_or_else(|| format!("remembered metadata has an instant out of range ({secs} s)"))
    }

    fn maybe_instant(&mut self) -> Result<Option<DateTime<Utc>>, String> {
        if self.flag()? {
            self.instant().map(Some)
        } else {
            Ok(None)
        }
    }
}

#[cold]
fn cut_short(at: usize) -> String {
    format!("remembered metadata is cut short at byte {at}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, nanos).unwrap()
    }

    /// Metadata with every optional field set (and one with none): each decodes to itself.
    fn samples() -> Vec<EnvMeta> {
        let full = EnvMeta {
            generator: "prenv".into(),
            schema: 1,
            env: EnvName::new("shop", 42).unwrap(),
            namespace: "shop-pr-42".into(),
            pr: 42,
            head_sha: "a".repeat(40),
            head_ref: "feature/ünïcode-branch".into(),
            url: "https://shop-pr-42.preview.example.com".into(),
            image: "ghcr.io/acme/shop:pr-42-aaaaaaa".into(),
            databases: vec![Database::Postgres, Database::Mariadb],
            created_at: at(1_700_000_000, 0),
            closed_at: Some(at(1_700_000_100, 5)),
            merged: true,
            preserve_until: Some(at(1_700_086_500, 0)),
            render_digest: "d1g3st".into(),
            pr_updated_at: Some(at(1_700_000_050, 123_456_789)),
            committed_at: Some(at(1_700_000_060, 0)),
            project: Some("shop".into()),
            eligible_at: Some(at(1_699_999_999, 0)),
            waiting_for: Some(ImageWait {
                sha: "b".repeat(40),
                image: "ghcr.io/acme/shop:pr-42-bbbbbbb".into(),
                since: at(1_700_000_070, 0),
            }),
            queued: Some(Queued {
                queued_at: at(1_700_000_080, 0),
                position: 3,
                of: 7,
            }),
        };
        let bare = EnvMeta {
            closed_at: None,
            merged: false,
            preserve_until: None,
            pr_updated_at: None,
            committed_at: None,
            project: None,
            eligible_at: None,
            waiting_for: None,
            queued: None,
            databases: vec![],
            ..full.clone()
        };
        vec![full, bare]
    }

    #[test]
    fn metadata_decodes_to_what_was_encoded() {
        for meta in samples() {
            let mut bytes = Vec::new();
            encode(&meta, &mut bytes).unwrap();
            assert_eq!(decode(&bytes), Ok(meta));
        }
    }

    #[test]
    fn cut_or_padded_bytes_are_refused_with_a_reason() {
        let mut bytes = Vec::new();
        encode(&samples()[0], &mut bytes).unwrap();
        for len in 0..bytes.len() {
            let error = decode(&bytes[..len]).unwrap_err();
            assert!(error.starts_with("remembered metadata"), "{len}: {error}");
        }
        bytes.push(0);
        assert_eq!(
            decode(&bytes).unwrap_err(),
            "remembered metadata has 1 bytes after its last field"
        );
    }
}
