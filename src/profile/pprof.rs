//! The pprof encoding of a heap profile: the `profile.proto` message,
//! written by hand (a few varint, packed and length-delimited fields, so a
//! protobuf library would be all weight), and the gzip framing that pprof
//! tools expect of a profile on disk.
//!
//! This module owns the layout of the profile: which sample types, in which
//! order, the string table, and the location and mapping ids. It runs at
//! dump time, outside any allocation path, so it allocates freely.

use std::collections::HashMap;

/// One executable mapping of the process.
pub(crate) struct Mapping {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address of the mapping.
    pub limit: u64,
    /// Offset in `file` of the byte mapped at `start`.
    pub offset: u64,
    /// Path of the mapped file.
    pub file: String,
    /// The file's GNU build id in lowercase hex; empty if unknown.
    pub build_id: String,
}

/// One function at a code address, as a symbolizer names it: at an
/// address with inlined calls there are several, innermost first.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Line {
    /// The function's name, demangled.
    pub function: String,
    /// The source file, or empty if unknown.
    pub file: String,
    /// The line in it, or 0 if unknown.
    pub line: i64,
}

/// One row of the profile: a call stack and its four values.
pub(crate) struct Sample<'a> {
    /// Code addresses, innermost (the allocating call) first. Already
    /// adjusted by the caller to point inside the call instruction (return
    /// address - 1), so encoded as is.
    pub frames: &'a [u64],
    /// alloc_objects, alloc_space (bytes), inuse_objects, inuse_space
    /// (bytes), in that order.
    pub values: [i64; 4],
    /// The allocation size class's object size in bytes, encoded as the
    /// numeric label "bytes" (as Go's heap profiles do) with unit "bytes".
    /// `None`: no label.
    pub object_size: Option<i64>,
}

/// Profile-wide fields.
pub(crate) struct Meta {
    /// When the profile's collection started, in nanoseconds since the Unix
    /// epoch.
    pub time_nanos: i64,
    /// How long the collection ran, in nanoseconds.
    pub duration_nanos: i64,
    /// The sampling rate: on average one sample per this many bytes
    /// allocated.
    pub period: i64,
}

/// The sample types, as (type, unit), in the order of [`Sample::values`]:
/// Go's heap profile order, so that tools treat the profile as a heap
/// profile (its `-sample_index` names work the same).
const SAMPLE_TYPES: [(&str, &str); 4] =
    [("alloc_objects", "count"), ("alloc_space", "bytes"), ("inuse_objects", "count"), ("inuse_space", "bytes")];

/// The sample type that tools show unless told otherwise.
const DEFAULT_SAMPLE_TYPE: &str = "inuse_space";

/// The comment that tells where the profile came from.
const COMMENT: &str = "scavalloc heap profile";

/// Field numbers of `profile.proto` (google/pprof, `proto/profile.proto`).
mod field {
    pub(super) mod profile {
        pub(crate) const SAMPLE_TYPE: u32 = 1;
        pub(crate) const SAMPLE: u32 = 2;
        pub(crate) const MAPPING: u32 = 3;
        pub(crate) const LOCATION: u32 = 4;
        pub(crate) const FUNCTION: u32 = 5;
        pub(crate) const STRING_TABLE: u32 = 6;
        pub(crate) const TIME_NANOS: u32 = 9;
        pub(crate) const DURATION_NANOS: u32 = 10;
        pub(crate) const PERIOD_TYPE: u32 = 11;
        pub(crate) const PERIOD: u32 = 12;
        pub(crate) const COMMENT: u32 = 13;
        pub(crate) const DEFAULT_SAMPLE_TYPE: u32 = 14;
    }
    pub(super) mod value_type {
        pub(crate) const TYPE: u32 = 1;
        pub(crate) const UNIT: u32 = 2;
    }
    pub(super) mod sample {
        pub(crate) const LOCATION_ID: u32 = 1;
        pub(crate) const VALUE: u32 = 2;
        pub(crate) const LABEL: u32 = 3;
    }
    pub(super) mod label {
        pub(crate) const KEY: u32 = 1;
        pub(crate) const NUM: u32 = 3;
        pub(crate) const NUM_UNIT: u32 = 4;
    }
    pub(super) mod mapping {
        pub(crate) const ID: u32 = 1;
        pub(crate) const MEMORY_START: u32 = 2;
        pub(crate) const MEMORY_LIMIT: u32 = 3;
        pub(crate) const FILE_OFFSET: u32 = 4;
        pub(crate) const FILENAME: u32 = 5;
        pub(crate) const BUILD_ID: u32 = 6;
        pub(crate) const HAS_FUNCTIONS: u32 = 7;
        pub(crate) const HAS_FILENAMES: u32 = 8;
        pub(crate) const HAS_LINE_NUMBERS: u32 = 9;
        pub(crate) const HAS_INLINE_FRAMES: u32 = 10;
    }
    pub(super) mod location {
        pub(crate) const ID: u32 = 1;
        pub(crate) const MAPPING_ID: u32 = 2;
        pub(crate) const ADDRESS: u32 = 3;
        pub(crate) const LINE: u32 = 4;
    }
    pub(super) mod line {
        pub(crate) const FUNCTION_ID: u32 = 1;
        pub(crate) const LINE: u32 = 2;
    }
    pub(super) mod function {
        pub(crate) const ID: u32 = 1;
        pub(crate) const NAME: u32 = 2;
        pub(crate) const SYSTEM_NAME: u32 = 3;
        pub(crate) const FILENAME: u32 = 4;
    }
}

/// The uncompressed profile.proto bytes.
///
/// Mapping ids are 1 + the index in `mappings`; pprof takes the first
/// mapping for the main binary. The mappings must not overlap (those of
/// `/proc/self/maps` never do).
///
/// With `symbolize`, each location gets the functions it names (innermost
/// first), and a mapping whose locations got any is marked as symbolized,
/// so that tools show those names rather than look the addresses up
/// themselves; without, tools symbolize every address from the files.
pub(crate) fn encode(
    meta: &Meta,
    mappings: &[Mapping],
    samples: &[Sample<'_>],
    mut symbolize: Option<&mut dyn FnMut(u64) -> Vec<Line>>,
) -> Vec<u8> {
    let mut strings = Strings::new();
    let sample_types = SAMPLE_TYPES.map(|(ty, unit)| (strings.id(ty), strings.id(unit)));
    let period_type = (strings.id("space"), strings.id("bytes"));
    let size_key = strings.id("bytes");
    let size_unit = strings.id("bytes");
    let comment = strings.id(COMMENT);
    let default_sample_type = strings.id(DEFAULT_SAMPLE_TYPE);
    let mapping_names: Vec<(i64, i64)> =
        mappings.iter().map(|m| (strings.id(&m.file), strings.id(&m.build_id))).collect();
    let mut locations = Locations::new(mappings);

    let mut out = Vec::new();
    for (ty, unit) in sample_types {
        message_field(&mut out, field::profile::SAMPLE_TYPE, |m| value_type(m, ty, unit));
    }
    for sample in samples {
        message_field(&mut out, field::profile::SAMPLE, |m| {
            let ids: Vec<u64> = sample.frames.iter().map(|&address| locations.id(address)).collect();
            packed_field(m, field::sample::LOCATION_ID, ids);
            // int64 values go on the wire as their two's complement bits.
            packed_field(m, field::sample::VALUE, sample.values.map(|v| v as u64));
            if let Some(size) = sample.object_size {
                message_field(m, field::sample::LABEL, |l| {
                    int_field(l, field::label::KEY, size_key);
                    int_field(l, field::label::NUM, size);
                    int_field(l, field::label::NUM_UNIT, size_unit);
                });
            }
        });
    }
    // Each location's lines, and the functions they name (ids from 1).
    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut function_list: Vec<(i64, i64)> = Vec::new();
    let mut location_lines: Vec<Vec<(u64, i64)>> = Vec::with_capacity(locations.list.len());
    let mut symbolized = vec![false; mappings.len()];
    for &(address, mapping_id) in &locations.list {
        let lines = match symbolize.as_mut() {
            Some(symbolize) if mapping_id != 0 => symbolize(address),
            _ => Vec::new(),
        };
        if !lines.is_empty() {
            symbolized[mapping_id as usize - 1] = true;
        }
        let lines = lines
            .into_iter()
            .map(|l| {
                let id = *functions.entry((l.function.clone(), l.file.clone())).or_insert_with(|| {
                    function_list.push((strings.id(&l.function), strings.id(&l.file)));
                    function_list.len() as u64
                });
                (id, l.line)
            })
            .collect();
        location_lines.push(lines);
    }
    for (index, (mapping, &(file, build_id))) in mappings.iter().zip(&mapping_names).enumerate() {
        message_field(&mut out, field::profile::MAPPING, |m| {
            uint_field(m, field::mapping::ID, index as u64 + 1);
            uint_field(m, field::mapping::MEMORY_START, mapping.start);
            uint_field(m, field::mapping::MEMORY_LIMIT, mapping.limit);
            uint_field(m, field::mapping::FILE_OFFSET, mapping.offset);
            int_field(m, field::mapping::FILENAME, file);
            int_field(m, field::mapping::BUILD_ID, build_id);
            // Unless symbolized here, the flags stay false: tools symbolize
            // the addresses from the mapped files.
            if symbolized[index] {
                for flag in [
                    field::mapping::HAS_FUNCTIONS,
                    field::mapping::HAS_FILENAMES,
                    field::mapping::HAS_LINE_NUMBERS,
                    field::mapping::HAS_INLINE_FRAMES,
                ] {
                    uint_field(m, flag, 1);
                }
            }
        });
    }
    for (index, (&(address, mapping_id), lines)) in locations.list.iter().zip(&location_lines).enumerate() {
        message_field(&mut out, field::profile::LOCATION, |m| {
            uint_field(m, field::location::ID, index as u64 + 1);
            uint_field(m, field::location::MAPPING_ID, mapping_id);
            uint_field(m, field::location::ADDRESS, address);
            for &(function_id, line) in lines {
                message_field(m, field::location::LINE, |l| {
                    uint_field(l, field::line::FUNCTION_ID, function_id);
                    int_field(l, field::line::LINE, line);
                });
            }
        });
    }
    for (index, &(name, file)) in function_list.iter().enumerate() {
        message_field(&mut out, field::profile::FUNCTION, |f| {
            uint_field(f, field::function::ID, index as u64 + 1);
            int_field(f, field::function::NAME, name);
            int_field(f, field::function::SYSTEM_NAME, name);
            int_field(f, field::function::FILENAME, file);
        });
    }
    // Every entry is written, the empty string 0 included: a repeated
    // field's elements have no default to leave out.
    for s in &strings.table {
        bytes_field(&mut out, field::profile::STRING_TABLE, s.as_bytes());
    }
    int_field(&mut out, field::profile::TIME_NANOS, meta.time_nanos);
    int_field(&mut out, field::profile::DURATION_NANOS, meta.duration_nanos);
    message_field(&mut out, field::profile::PERIOD_TYPE, |m| value_type(m, period_type.0, period_type.1));
    int_field(&mut out, field::profile::PERIOD, meta.period);
    packed_field(&mut out, field::profile::COMMENT, [comment as u64]);
    int_field(&mut out, field::profile::DEFAULT_SAMPLE_TYPE, default_sample_type);
    out
}

/// The profile's string table: each distinct string once, the empty string
/// first (profile.proto requires `string_table[0] == ""`).
struct Strings {
    ids: HashMap<String, i64>,
    table: Vec<String>,
}

impl Strings {
    fn new() -> Self {
        let mut strings = Strings { ids: HashMap::new(), table: Vec::new() };
        strings.id("");
        strings
    }

    /// The index of `s` in the table, adding it if it is new.
    fn id(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.table.len() as i64;
        self.ids.insert(s.to_owned(), id);
        self.table.push(s.to_owned());
        id
    }
}

/// The profile's locations: one per distinct address, ids from 1 in order
/// of first use, each with the id of the mapping that holds its address.
struct Locations<'m> {
    mappings: &'m [Mapping],
    /// Indices into `mappings`, by start address, to find an address's
    /// mapping by binary search.
    by_start: Vec<usize>,
    ids: HashMap<u64, u64>,
    /// (address, mapping id or 0), the location with id `i` at `i - 1`.
    list: Vec<(u64, u64)>,
}

impl<'m> Locations<'m> {
    fn new(mappings: &'m [Mapping]) -> Self {
        let mut by_start: Vec<usize> = (0..mappings.len()).collect();
        by_start.sort_by_key(|&i| mappings[i].start);
        Locations { mappings, by_start, ids: HashMap::new(), list: Vec::new() }
    }

    /// The id of the location at `address`, adding it if it is new.
    fn id(&mut self, address: u64) -> u64 {
        if let Some(&id) = self.ids.get(&address) {
            return id;
        }
        let mapping_id = self.mapping_id(address);
        self.list.push((address, mapping_id));
        let id = self.list.len() as u64;
        self.ids.insert(address, id);
        id
    }

    /// The id of the mapping that holds `address`; 0 (no mapping) if none.
    fn mapping_id(&self, address: u64) -> u64 {
        let after = self.by_start.partition_point(|&i| self.mappings[i].start <= address);
        match after.checked_sub(1).map(|k| self.by_start[k]) {
            Some(i) if address < self.mappings[i].limit => i as u64 + 1,
            _ => 0,
        }
    }
}

/// Protobuf wire type of varint fields.
const WIRE_VARINT: u32 = 0;
/// Protobuf wire type of length-delimited fields (messages, strings, packed
/// repeated scalars).
const WIRE_LEN: u32 = 2;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    varint(out, u64::from(field << 3 | wire_type));
}

/// A singular uint64 field; left out when 0, the proto3 default.
fn uint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(out, field, WIRE_VARINT);
        varint(out, v);
    }
}

/// A singular int64 field: on the wire as its two's complement bits (a
/// negative value takes 10 bytes); left out when 0.
fn int_field(out: &mut Vec<u8>, field: u32, v: i64) {
    uint_field(out, field, v as u64);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, WIRE_LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A packed repeated varint field; left out when empty (zeros inside it
/// are kept: they are elements, not defaults).
fn packed_field(out: &mut Vec<u8>, field: u32, values: impl IntoIterator<Item = u64>) {
    let mut body = Vec::new();
    for v in values {
        varint(&mut body, v);
    }
    if !body.is_empty() {
        bytes_field(out, field, &body);
    }
}

/// An embedded message, written by `body`; always written, even empty, as
/// it is an element of a repeated field or a value that must be present.
fn message_field(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    let mut message = Vec::new();
    body(&mut message);
    bytes_field(out, field, &message);
}

fn value_type(out: &mut Vec<u8>, ty: i64, unit: i64) {
    int_field(out, field::value_type::TYPE, ty);
    int_field(out, field::value_type::UNIT, unit);
}

/// gzip of `data` (what pprof tools expect on disk): a header without
/// name or time, the raw deflate stream, and the CRC32 and length trailer
/// (RFC 1952).
pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    // miniz_oxide's default level: profiles are small and written rarely.
    const LEVEL: u8 = 6;
    // ID1 ID2, CM = 8 (deflate), FLG = 0 (no extra fields), MTIME = 0 (not
    // given), XFL = 0, OS = 255 (unknown).
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let deflated = miniz_oxide::deflate::compress_to_vec(data, LEVEL);
    let mut out = Vec::with_capacity(HEADER.len() + deflated.len() + 8);
    out.extend_from_slice(&HEADER);
    out.extend_from_slice(&deflated);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    // ISIZE is the input's length modulo 2^32.
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 as gzip uses it (IEEE 802.3: reflected, polynomial 0xEDB88320,
/// initial value and final xor all ones). miniz_oxide has only zlib's
/// Adler-32, and a byte-at-a-time table is fast enough for a profile.
fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |crc, &b| CRC32_TABLE[usize::from(crc as u8 ^ b)] ^ (crc >> 8))
}

/// The CRC of each byte value, computed at compile time.
const CRC32_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { 0xEDB8_8320 ^ (crc >> 1) } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
#[path = "../../tests/support/profile_proto.rs"]
mod profile_proto;

#[cfg(test)]
mod tests {
    //! Decodes what `encode` writes with prost (the message definitions
    //! the integration tests use too, written after profile.proto) and
    //! checks it field by field.

    use super::profile_proto::*;
    use super::*;

    fn decode(bytes: &[u8]) -> Profile {
        <Profile as prost::Message>::decode(bytes).expect("encode wrote a valid profile.proto")
    }

    fn mappings() -> Vec<Mapping> {
        // Out of address order on purpose: ids follow the caller's order,
        // lookups must not depend on it.
        vec![
            Mapping {
                start: 0x5555_0000_0000,
                limit: 0x5555_0010_0000,
                offset: 0x1000,
                file: "/usr/bin/server".into(),
                build_id: "0123456789abcdef".into(),
            },
            Mapping {
                start: 0x7f00_0000_0000,
                limit: 0x7f00_0020_0000,
                offset: 0x28000,
                file: "/lib/x86_64-linux-gnu/libc.so.6".into(),
                build_id: "fedcba9876543210".into(),
            },
            Mapping {
                start: 0x7f00_1000_0000,
                limit: 0x7f00_1000_8000,
                offset: 0,
                file: "/opt/my lib/libplugin.so".into(),
                build_id: String::new(),
            },
        ]
    }

    /// An address outside all mappings.
    const STRAY: u64 = 0x1234;

    fn sample_stacks() -> Vec<Vec<u64>> {
        vec![
            vec![0x5555_0000_1234, 0x7f00_0000_5678, 0x5555_0000_2000],
            // Shares two addresses with the first: same locations.
            vec![0x7f00_0000_5678, 0x5555_0000_1234, STRAY],
            // The last byte of mapping 3, and mapping 2's limit (outside).
            vec![0x7f00_1000_7fff, 0x7f00_0020_0000],
            vec![],
        ]
    }

    fn samples(stacks: &[Vec<u64>]) -> Vec<Sample<'_>> {
        stacks
            .iter()
            .enumerate()
            .map(|(i, frames)| {
                let i = i as i64;
                Sample {
                    frames,
                    values: [i + 1, (i + 1) * 1000, i, i * 1000],
                    object_size: if i == 1 { None } else { Some(48 << i) },
                }
            })
            .collect()
    }

    const META: Meta =
        Meta { time_nanos: 1_765_000_000_123_456_789, duration_nanos: 30_000_000_000, period: 512 * 1024 };

    fn string(p: &Profile, id: i64) -> &str {
        &p.string_table[usize::try_from(id).expect("string id >= 0")]
    }

    #[test]
    fn profile_fields_decode_as_given() {
        let mappings = mappings();
        let stacks = sample_stacks();
        let samples = samples(&stacks);
        let p = decode(&encode(&META, &mappings, &samples, None));

        assert_eq!(p.string_table[0], "");
        let mut seen = std::collections::HashSet::new();
        assert!(p.string_table.iter().all(|s| seen.insert(s)), "duplicate strings: {:?}", p.string_table);

        let types: Vec<(&str, &str)> =
            p.sample_type.iter().map(|vt| (string(&p, vt.r#type), string(&p, vt.unit))).collect();
        assert_eq!(
            types,
            [
                ("alloc_objects", "count"),
                ("alloc_space", "bytes"),
                ("inuse_objects", "count"),
                ("inuse_space", "bytes")
            ]
        );
        let period_type = p.period_type.as_ref().expect("period_type");
        assert_eq!((string(&p, period_type.r#type), string(&p, period_type.unit)), ("space", "bytes"));
        assert_eq!(p.period, META.period);
        assert_eq!(p.time_nanos, META.time_nanos);
        assert_eq!(p.duration_nanos, META.duration_nanos);
        assert_eq!(string(&p, p.default_sample_type), "inuse_space");
        assert_eq!(p.comment.iter().map(|&c| string(&p, c)).collect::<Vec<_>>(), ["scavalloc heap profile"]);
        assert_eq!((p.drop_frames, p.keep_frames), (0, 0));
        assert!(p.function.is_empty());

        assert_eq!(p.mapping.len(), mappings.len());
        for (i, (got, want)) in p.mapping.iter().zip(&mappings).enumerate() {
            assert_eq!(got.id, i as u64 + 1);
            assert_eq!((got.memory_start, got.memory_limit, got.file_offset), (want.start, want.limit, want.offset));
            assert_eq!(string(&p, got.filename), want.file);
            assert_eq!(string(&p, got.build_id), want.build_id);
            assert!(!(got.has_functions || got.has_filenames || got.has_line_numbers || got.has_inline_frames));
        }

        let by_id: HashMap<u64, &Location> = p.location.iter().map(|l| (l.id, l)).collect();
        assert_eq!(by_id.len(), p.location.len(), "location ids are unique");
        let distinct: std::collections::HashSet<u64> = stacks.iter().flatten().copied().collect();
        assert_eq!(p.location.len(), distinct.len(), "one location per distinct address");
        let mut ids: Vec<u64> = by_id.keys().copied().collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=distinct.len() as u64).collect::<Vec<_>>());
        for l in &p.location {
            assert!(l.line.is_empty() && !l.is_folded);
        }

        assert_eq!(p.sample.len(), samples.len());
        for (got, want) in p.sample.iter().zip(&samples) {
            assert_eq!(got.value, want.values);
            let addresses: Vec<u64> = got.location_id.iter().map(|id| by_id[id].address).collect();
            assert_eq!(addresses, want.frames);
            match want.object_size {
                None => assert!(got.label.is_empty()),
                Some(size) => {
                    assert_eq!(got.label.len(), 1);
                    let label = &got.label[0];
                    assert_eq!(string(&p, label.key), "bytes");
                    assert_eq!(label.num, size);
                    assert_eq!(string(&p, label.num_unit), "bytes");
                    assert_eq!(label.str, 0);
                }
            }
        }

        let mapping_of = |address: u64| by_id.values().find(|l| l.address == address).expect("location").mapping_id;
        assert_eq!(mapping_of(0x5555_0000_1234), 1);
        assert_eq!(mapping_of(0x5555_0000_2000), 1);
        assert_eq!(mapping_of(0x7f00_0000_5678), 2);
        assert_eq!(mapping_of(0x7f00_1000_7fff), 3);
        assert_eq!(mapping_of(0x7f00_0020_0000), 0, "a mapping's limit is outside it");
        assert_eq!(mapping_of(STRAY), 0);
    }

    /// With a symbolizer, each location in a mapping carries its lines,
    /// innermost first, over a function table with each (name, file) once;
    /// only mappings with named locations are marked as symbolized, and
    /// addresses outside every mapping are not asked about.
    #[test]
    fn symbolized_locations_carry_their_lines() {
        let mappings = mappings();
        let stacks = sample_stacks();
        let samples = samples(&stacks);
        let mut asked = Vec::new();
        let mut symbolize = |address: u64| -> Vec<super::Line> {
            asked.push(address);
            let line = |function: &str, line| super::Line { function: function.into(), file: "src/x.rs".into(), line };
            match address {
                // An inlined call: the callee first, then its caller.
                0x5555_0000_1234 => vec![line("inner", 10), line("outer", 20)],
                0x5555_0000_2000 => vec![line("outer", 30)],
                _ => Vec::new(),
            }
        };
        let p = decode(&encode(&META, &mappings, &samples, Some(&mut symbolize)));
        asked.sort_unstable();
        assert!(!asked.contains(&STRAY) && !asked.contains(&0x7f00_0020_0000), "unmapped addresses: {asked:x?}");

        assert_eq!(p.function.len(), 2, "each function once: {:?}", p.function);
        let function = |id: u64| {
            let f = p.function.iter().find(|f| f.id == id).expect("function id resolves");
            assert_eq!(f.system_name, f.name);
            (string(&p, f.name), string(&p, f.filename))
        };
        let lines_at = |address: u64| -> Vec<(&str, i64)> {
            let l = p.location.iter().find(|l| l.address == address).expect("location");
            l.line.iter().map(|line| (function(line.function_id).0, line.line)).collect()
        };
        assert_eq!(lines_at(0x5555_0000_1234), [("inner", 10), ("outer", 20)]);
        assert_eq!(lines_at(0x5555_0000_2000), [("outer", 30)]);
        assert!(lines_at(0x7f00_0000_5678).is_empty());
        assert_eq!(function(1).1, "src/x.rs");
        let flags = |m: &PbMapping| (m.has_functions, m.has_filenames, m.has_line_numbers, m.has_inline_frames);
        assert_eq!(flags(&p.mapping[0]), (true, true, true, true));
        assert_eq!(flags(&p.mapping[1]), (false, false, false, false));
    }

    #[test]
    fn empty_and_negative_profiles_decode() {
        let p = decode(&encode(&Meta { time_nanos: 0, duration_nanos: 0, period: 0 }, &[], &[], None));
        assert_eq!(p.string_table[0], "");
        assert_eq!(p.sample_type.len(), 4);
        assert!(p.sample.is_empty() && p.mapping.is_empty() && p.location.is_empty());

        // Not values a heap profile has, but the encoding must carry them.
        let frames = [u64::MAX, 0];
        let sample = Sample { frames: &frames, values: [-1, i64::MIN, i64::MAX, 0], object_size: Some(-5) };
        let meta = Meta { time_nanos: -1, duration_nanos: i64::MAX, period: 1 };
        let p = decode(&encode(&meta, &[], &[sample], None));
        assert_eq!(p.sample[0].value, [-1, i64::MIN, i64::MAX, 0]);
        assert_eq!(p.sample[0].label[0].num, -5);
        assert_eq!((p.time_nanos, p.duration_nanos), (-1, i64::MAX));
        let addresses: Vec<u64> =
            p.sample[0].location_id.iter().map(|&id| p.location[id as usize - 1].address).collect();
        assert_eq!(addresses, frames);
    }

    /// CRC-32 one bit at a time, straight from the definition, to check
    /// the table-driven one against.
    fn naive_crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                let lsb = crc & 1;
                crc >>= 1;
                if lsb != 0 {
                    crc ^= 0xEDB8_8320;
                }
            }
        }
        !crc
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(naive_crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    /// Inputs for the gzip checks: empty, one byte, a profile, and a MiB
    /// of mixed noise and repeats (several deflate blocks).
    fn gzip_inputs() -> Vec<Vec<u8>> {
        let stacks = sample_stacks();
        let profile = encode(&META, &mappings(), &samples(&stacks), None);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let big: Vec<u8> = (0..1 << 20)
            .map(|i: u32| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if i & 0x1000 == 0 {
                    state as u8
                } else {
                    (i % 251) as u8
                }
            })
            .collect();
        vec![Vec::new(), vec![b'x'], profile, big]
    }

    #[test]
    fn gzip_round_trip() {
        for data in gzip_inputs() {
            let gz = gzip(&data);
            assert!(gz.len() >= 18);
            assert_eq!(gz[..4], [0x1f, 0x8b, 8, 0], "magic, deflate, no flags");
            let (body, trailer) = gz[10..].split_at(gz.len() - 18);
            let inflated = miniz_oxide::inflate::decompress_to_vec(body).expect("a raw deflate stream");
            assert_eq!(inflated, data);
            let crc = u32::from_le_bytes(trailer[..4].try_into().unwrap());
            let isize = u32::from_le_bytes(trailer[4..].try_into().unwrap());
            assert_eq!(crc, naive_crc32(&data));
            assert_eq!(isize, data.len() as u32);
        }
    }

    #[test]
    fn gzip_command_accepts_output() {
        let dir = std::env::temp_dir();
        for (i, data) in gzip_inputs().into_iter().enumerate() {
            let path = dir.join(format!("scavalloc-pprof-test-{}-{i}.gz", std::process::id()));
            std::fs::write(&path, gzip(&data)).expect("write the gzip file");
            let test = std::process::Command::new("gzip").arg("-t").arg(&path).status();
            let decompressed = std::process::Command::new("gzip").arg("-dc").arg(&path).output();
            let _ = std::fs::remove_file(&path);
            match (test, decompressed) {
                (Ok(test), Ok(decompressed)) => {
                    assert!(test.success(), "gzip -t rejected input {i}");
                    assert!(decompressed.status.success());
                    assert!(decompressed.stdout == data, "gzip -dc gave other bytes for input {i}");
                }
                (Err(e), _) | (_, Err(e)) => {
                    println!("skipped: cannot run gzip ({e})");
                    return;
                }
            }
        }
    }
}
