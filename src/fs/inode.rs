//! The table of FUSE node ids handed to the kernel.
//!
//! fuser uses the inode number of the attributes it is given as the node id, so a node id is
//! the inode number that `stat` shows: the backing file's own number (see `attr::visible_ino`).
//! That keeps ids stable while mounted, equal in readdir and stat, and shared by every name of
//! a hard-linked file. A node keeps the names it is known under (parent node and name); its
//! path in both trees is derived from the first one.
//!
//! The kernel keeps a node for every file that a walk of the mount visits, so the table is laid
//! out for size. Each node is one 40-byte slot of a `Vec` with its id, its lookup count and its
//! first name, stored inline up to 15 bytes. Hard-linked nodes keep their further names (all
//! but the first) in a separate list. Two hash indexes of 4-byte slot numbers find a node by id
//! and a name by (parent id, name). They store no keys but hash the key read from the slot, so
//! each name is stored once.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

pub const ROOT: u64 = 1;

/// Maximum length of a name stored inside its slot.
const INLINE_NAME_MAX: usize = 15;
/// `Name::tag` of a longer name: its bytes are in `Store::long_names`, at the index that the
/// first four bytes hold.
const LONG_NAME: u8 = 16;
/// `Name::tag` of a node without names, because every known name was unlinked (the file may
/// still be open).
const NO_NAME: u8 = 17;
/// `Name::tag` of a free node slot, whose `parent` is the next free slot.
const FREE_SLOT: u8 = 18;
/// Flag of a `by_name` entry that is an index into `Store::links`. Without it the entry is the
/// slot of the node whose first name it is.
const LINK: u32 = 1 << 31;
/// End of the free slot list, and the `node` of a free link.
const NO_SLOT: u32 = u32::MAX;

/// A name in 16 bytes.
#[derive(Clone, Copy)]
struct Name {
    bytes: [u8; INLINE_NAME_MAX],
    /// Length of an inline name, or `LONG_NAME`, `NO_NAME` or `FREE_SLOT`.
    tag: u8,
}

impl Name {
    const NONE: Name = Name {
        bytes: [0; INLINE_NAME_MAX],
        tag: NO_NAME,
    };

    fn is_none(&self) -> bool {
        self.tag == NO_NAME
    }

    fn long_index(&self) -> usize {
        let index: [u8; 4] = self.bytes[..4].try_into().expect("4 bytes");
        u32::from_le_bytes(index) as usize
    }
}

/// A node's slot, which is most of the table's memory: 40 bytes.
struct Node {
    id: u64,
    /// Lookups the kernel holds on this node; it is dropped when `forget` brings this to 0.
    nlookup: u64,
    /// Parent id of the first name, or the next free slot while the slot is free.
    parent: u64,
    /// The first, most recently used name.
    name: Name,
}

const _: () = assert!(std::mem::size_of::<Name>() == 16);
const _: () = assert!(std::mem::size_of::<Node>() == 40);

/// A further name of a hard-linked node.
struct Link {
    parent: u64,
    name: Name,
    /// Slot of the node, or `NO_SLOT` while this link is free.
    node: u32,
}

/// A (parent id, name) key of `InodeTable::by_name` with its hash.
struct Key<'a> {
    parent: u64,
    name: &'a [u8],
    hash: u64,
}

/// The slots and names that the indexes refer to, kept apart from the indexes so that an
/// index's hasher can read keys while the index itself is borrowed mutably.
struct Store {
    nodes: Vec<Node>,
    /// First free slot of `nodes`, or `NO_SLOT`.
    free_node: u32,
    links: Vec<Link>,
    free_links: Vec<u32>,
    /// Names longer than `INLINE_NAME_MAX`. A free entry is empty.
    long_names: Vec<Box<[u8]>>,
    free_long_names: Vec<u32>,
    /// The names after the first of each hard-linked node, keyed by slot, as indexes into
    /// `links` in the node's order of names. Nodes with one name or none have no entry.
    further: HashMap<u32, Vec<u32>>,
    hasher: RandomState,
}

impl Store {
    fn new() -> Store {
        Store {
            nodes: Vec::new(),
            free_node: NO_SLOT,
            links: Vec::new(),
            free_links: Vec::new(),
            long_names: Vec::new(),
            free_long_names: Vec::new(),
            further: HashMap::new(),
            hasher: RandomState::new(),
        }
    }

    fn hash_id(&self, id: u64) -> u64 {
        self.hasher.hash_one(id)
    }

    fn hash_name(&self, parent: u64, name: &[u8]) -> u64 {
        self.hasher.hash_one((parent, name))
    }

    /// Hashes the (parent id, name) key of a `by_name` entry.
    fn hash_entry(&self, entry: u32) -> u64 {
        let (parent, name) = self.alias(entry);
        self.hash_name(parent, self.bytes(&name))
    }

    fn bytes<'a>(&'a self, name: &'a Name) -> &'a [u8] {
        match name.tag {
            LONG_NAME => &self.long_names[name.long_index()],
            NO_NAME | FREE_SLOT => &[],
            len => &name.bytes[..len as usize],
        }
    }

    /// Returns the parent id and name that a `by_name` entry refers to.
    fn alias(&self, entry: u32) -> (u64, Name) {
        if entry & LINK == 0 {
            let node = &self.nodes[entry as usize];
            (node.parent, node.name)
        } else {
            let link = &self.links[(entry & !LINK) as usize];
            (link.parent, link.name)
        }
    }

    fn set_alias(&mut self, entry: u32, parent: u64, name: Name) {
        if entry & LINK == 0 {
            let node = &mut self.nodes[entry as usize];
            node.parent = parent;
            node.name = name;
        } else {
            let link = &mut self.links[(entry & !LINK) as usize];
            link.parent = parent;
            link.name = name;
        }
    }

    /// Returns the slot of the node that a `by_name` entry names.
    fn node_of(&self, entry: u32) -> u32 {
        if entry & LINK == 0 {
            entry
        } else {
            self.links[(entry & !LINK) as usize].node
        }
    }

    fn further_names(&self, slot: u32) -> &[u32] {
        if self.further.is_empty() {
            return &[];
        }
        self.further.get(&slot).map_or(&[], Vec::as_slice)
    }

    fn new_name(&mut self, bytes: &[u8]) -> Name {
        let mut name = Name::NONE;
        if bytes.len() <= INLINE_NAME_MAX {
            name.bytes[..bytes.len()].copy_from_slice(bytes);
            name.tag = bytes.len() as u8;
            return name;
        }

        let stored = Box::from(bytes);
        let index = match self.free_long_names.pop() {
            Some(index) => {
                self.long_names[index as usize] = stored;
                index
            }
            None => {
                let index =
                    u32::try_from(self.long_names.len()).expect("fewer than 2^32 long names");
                self.long_names.push(stored);
                index
            }
        };
        name.bytes[..4].copy_from_slice(&index.to_le_bytes());
        name.tag = LONG_NAME;
        name
    }

    fn free_name(&mut self, name: Name) {
        if name.tag == LONG_NAME {
            let index = name.long_index();
            self.long_names[index] = Box::default();
            self.free_long_names.push(index as u32);
        }
    }

    fn new_node(&mut self, id: u64, nlookup: u64) -> u32 {
        let node = Node {
            id,
            nlookup,
            parent: 0,
            name: Name::NONE,
        };
        if self.free_node != NO_SLOT {
            let slot = self.free_node;
            self.free_node = self.nodes[slot as usize].parent as u32;
            self.nodes[slot as usize] = node;
            return slot;
        }
        let slot = u32::try_from(self.nodes.len())
            .ok()
            .filter(|&slot| slot < LINK)
            .expect("fewer than 2^31 nodes");
        self.nodes.push(node);
        slot
    }

    /// Frees a node's slot, whose names must be freed already.
    fn free_node(&mut self, slot: u32) {
        let node = &mut self.nodes[slot as usize];
        node.name = Name::NONE;
        node.name.tag = FREE_SLOT;
        node.parent = u64::from(self.free_node);
        self.free_node = slot;
    }

    fn new_link(&mut self, parent: u64, name: Name, node: u32) -> u32 {
        let link = Link { parent, name, node };
        if let Some(index) = self.free_links.pop() {
            self.links[index as usize] = link;
            return index;
        }
        let index = u32::try_from(self.links.len())
            .ok()
            .filter(|&index| index < LINK)
            .expect("fewer than 2^31 hard links");
        self.links.push(link);
        index
    }

    /// Frees a link, whose name must be freed or moved already.
    fn free_link(&mut self, index: u32) {
        let link = &mut self.links[index as usize];
        link.name = Name::NONE;
        link.node = NO_SLOT;
        self.free_links.push(index);
    }
}

pub struct InodeTable {
    store: Store,
    /// The slot of each node, hashed by node id.
    by_id: HashTable<u32>,
    /// Every name, hashed by (parent id, name): the node's slot for its first name, or `LINK`
    /// and the index into `Store::links` for a further name.
    by_name: HashTable<u32>,
}

impl fmt::Debug for InodeTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InodeTable")
            .field("nodes", &self.by_id.len())
            .field("names", &self.by_name.len())
            .field("hard_linked_nodes", &self.store.further.len())
            .finish()
    }
}

impl Default for InodeTable {
    fn default() -> Self {
        InodeTable::new()
    }
}

impl InodeTable {
    pub fn new() -> InodeTable {
        let mut table = InodeTable {
            store: Store::new(),
            by_id: HashTable::new(),
            by_name: HashTable::new(),
        };
        table.insert_node(ROOT, 1);
        table
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Returns the path of a node relative to the backing roots, or `None` for an unknown node
    /// or one without a name left.
    pub fn path(&self, id: u64) -> Option<PathBuf> {
        let mut names: Vec<&[u8]> = Vec::new();
        let mut current = id;
        while current != ROOT {
            let node = &self.store.nodes[self.find_node(current)? as usize];
            if node.name.is_none() {
                return None;
            }
            names.push(self.store.bytes(&node.name));
            current = node.parent;
            if names.len() > 4096 {
                return None;
            }
        }
        let mut path = PathBuf::with_capacity(names.iter().map(|name| name.len() + 1).sum());
        for name in names.iter().rev() {
            path.push(OsStr::from_bytes(name));
        }
        Some(path)
    }

    /// Records a lookup of `name` in `parent` that found node `id`, adding one kernel
    /// reference.
    pub fn lookup(&mut self, parent: u64, name: &OsStr, id: u64) {
        let key = self.key(parent, name.as_bytes());
        let slot = self.find_or_insert_node(id);
        match self.find_name(&key) {
            Some(entry) if self.store.node_of(entry) == slot => self.move_to_front(entry),
            found => {
                // A name of another node now names this one.
                if let Some(entry) = found {
                    self.remove_alias(entry);
                }
                self.push_front(slot, &key);
            }
        }
        self.store.nodes[slot as usize].nlookup += 1;
    }

    /// Records that `name` in `parent` is node `id` without adding a kernel reference: for
    /// nodes the kernel kept from a previous daemon.
    pub fn learn(&mut self, parent: u64, name: &OsStr, id: u64) {
        let key = self.key(parent, name.as_bytes());
        if self.find_name(&key).is_some() {
            return;
        }
        let slot = self.find_or_insert_node(id);
        self.push_back(slot, &key);
    }

    /// Releases `count` kernel references; the node is dropped when none remain.
    pub fn forget(&mut self, id: u64, count: u64) {
        if id == ROOT {
            return;
        }
        let Some(slot) = self.find_node(id) else {
            return;
        };
        let node = &mut self.store.nodes[slot as usize];
        node.nlookup = node.nlookup.saturating_sub(count);
        if node.nlookup > 0 {
            return;
        }
        self.remove_node(slot);
    }

    /// Forgets the name `name` in `parent` after an unlink or rmdir.
    pub fn remove_name(&mut self, parent: u64, name: &OsStr) {
        let key = self.key(parent, name.as_bytes());
        if let Some(entry) = self.find_name(&key) {
            self.remove_alias(entry);
        }
    }

    /// Moves a name after a rename; a node replaced at the destination loses that name.
    pub fn rename(&mut self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) {
        let from = self.key(parent, name.as_bytes());
        let to = self.key(new_parent, new_name.as_bytes());
        if from.parent == to.parent && from.name == to.name {
            return;
        }
        if let Some(replaced) = self.find_name(&to) {
            self.remove_alias(replaced);
        }
        // Looked up after the removal, which moves the names of a node that lost its first.
        if let Some(entry) = self.find_name(&from) {
            self.rename_alias(entry, &to);
        }
    }

    /// Swaps two names after RENAME_EXCHANGE. Two names of one node swap places in its list,
    /// although the kernel sends no such exchange: Linux's `vfs_rename` returns early when both
    /// names are one inode.
    pub fn exchange(&mut self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) {
        let a = self.key(parent, name.as_bytes());
        let b = self.key(new_parent, new_name.as_bytes());
        if a.parent == b.parent && a.name == b.name {
            return;
        }
        match (self.find_name(&a), self.find_name(&b)) {
            (None, None) => {}
            (Some(entry), None) => self.rename_alias(entry, &b),
            (None, Some(entry)) => self.rename_alias(entry, &a),
            (Some(entry_a), Some(entry_b)) => {
                // Each bucket keeps its key's hash, so swapping the names at the two places
                // and the two entries keeps both indexed.
                let bucket_a = self.bucket_of(entry_a);
                let bucket_b = self.bucket_of(entry_b);
                let (parent_a, name_a) = self.store.alias(entry_a);
                let (parent_b, name_b) = self.store.alias(entry_b);
                self.store.set_alias(entry_a, parent_b, name_b);
                self.store.set_alias(entry_b, parent_a, name_a);
                *self.bucket_mut(bucket_a) = entry_b;
                *self.bucket_mut(bucket_b) = entry_a;
            }
        }
    }

    /// Encodes every node with its names and kernel references, for the daemon that takes the
    /// connection over. Per node: id, references, name count; per name: parent id, name
    /// length (u16) and bytes; all little-endian.
    pub fn encode(&self) -> Vec<u8> {
        fn write_name(out: &mut Vec<u8>, parent: u64, name: &[u8]) {
            out.extend_from_slice(&parent.to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name);
        }

        let mut out = Vec::with_capacity(self.len() * 48);
        for (slot, node) in self.store.nodes.iter().enumerate() {
            if node.name.tag == FREE_SLOT {
                continue;
            }
            let further = self.store.further_names(slot as u32);
            let count = usize::from(!node.name.is_none()) + further.len();
            out.extend_from_slice(&node.id.to_le_bytes());
            out.extend_from_slice(&node.nlookup.to_le_bytes());
            out.extend_from_slice(&(count as u32).to_le_bytes());
            if !node.name.is_none() {
                write_name(&mut out, node.parent, self.store.bytes(&node.name));
            }
            for &index in further {
                let link = &self.store.links[index as usize];
                write_name(&mut out, link.parent, self.store.bytes(&link.name));
            }
        }
        out
    }

    /// Rebuilds a table from `encode`'s output; `None` when the bytes are malformed.
    ///
    /// `encode` writes each node and each name once. A node that the bytes repeat is replaced
    /// by the later record. A name that they repeat moves to the later node, or is kept once
    /// within one node.
    pub fn decode(mut bytes: &[u8]) -> Option<InodeTable> {
        fn take<'a>(bytes: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
            if bytes.len() < len {
                return None;
            }
            let (head, rest) = bytes.split_at(len);
            *bytes = rest;
            Some(head)
        }
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));

        let mut table = InodeTable::new();
        let mut names: Vec<(u64, &[u8])> = Vec::new();
        while !bytes.is_empty() {
            let id = u64_of(take(&mut bytes, 8)?);
            let nlookup = u64_of(take(&mut bytes, 8)?);
            let count = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().ok()?);
            names.clear();
            names.reserve(count.min(1024) as usize);
            for _ in 0..count {
                let parent = u64_of(take(&mut bytes, 8)?);
                let len = u16::from_le_bytes(take(&mut bytes, 2)?.try_into().ok()?);
                names.push((parent, take(&mut bytes, len as usize)?));
            }

            if let Some(slot) = table.find_node(id) {
                table.remove_node(slot);
            }
            let slot = table.insert_node(id, nlookup);
            for &(parent, name) in &names {
                let key = table.key(parent, name);
                match table.find_name(&key) {
                    Some(entry) if table.store.node_of(entry) == slot => continue,
                    Some(entry) => table.remove_alias(entry),
                    None => {}
                }
                table.push_back(slot, &key);
            }
        }
        Some(table)
    }

    /// Returns the node known under `name` in `parent`, if any.
    pub fn child(&self, parent: u64, name: &OsStr) -> Option<u64> {
        let entry = self.find_name(&self.key(parent, name.as_bytes()))?;
        Some(self.store.nodes[self.store.node_of(entry) as usize].id)
    }

    fn find_node(&self, id: u64) -> Option<u32> {
        let nodes = &self.store.nodes;
        self.by_id
            .find(self.store.hash_id(id), |&slot| {
                nodes[slot as usize].id == id
            })
            .copied()
    }

    fn key<'a>(&self, parent: u64, name: &'a [u8]) -> Key<'a> {
        Key {
            parent,
            name,
            hash: self.store.hash_name(parent, name),
        }
    }

    fn find_name(&self, key: &Key) -> Option<u32> {
        let store = &self.store;
        self.by_name
            .find(key.hash, |&entry| {
                let (parent, name) = store.alias(entry);
                parent == key.parent && store.bytes(&name) == key.name
            })
            .copied()
    }

    /// Returns the bucket of a `by_name` entry, which stays valid until an entry is inserted
    /// or removed.
    fn bucket_of(&self, entry: u32) -> usize {
        self.by_name
            .find_bucket_index(self.store.hash_entry(entry), |&found| found == entry)
            .expect("every name is indexed")
    }

    fn bucket_mut(&mut self, bucket: usize) -> &mut u32 {
        self.by_name
            .get_bucket_mut(bucket)
            .expect("bucket of an indexed name")
    }

    fn insert_node(&mut self, id: u64, nlookup: u64) -> u32 {
        let slot = self.store.new_node(id, nlookup);
        let store = &self.store;
        self.by_id.insert_unique(store.hash_id(id), slot, |&slot| {
            store.hash_id(store.nodes[slot as usize].id)
        });
        slot
    }

    fn find_or_insert_node(&mut self, id: u64) -> u32 {
        let store = &mut self.store;
        let found = self.by_id.entry(
            store.hash_id(id),
            |&slot| store.nodes[slot as usize].id == id,
            |&slot| store.hash_id(store.nodes[slot as usize].id),
        );
        match found {
            Entry::Occupied(occupied) => *occupied.get(),
            Entry::Vacant(vacant) => {
                let slot = store.new_node(id, 0);
                vacant.insert(slot);
                slot
            }
        }
    }

    /// Indexes the name at `entry` under `hash`, the hash of its key. The name must be in place
    /// already.
    fn index_name(&mut self, entry: u32, hash: u64) {
        let store = &self.store;
        self.by_name
            .insert_unique(hash, entry, |&entry| store.hash_entry(entry));
    }

    fn unindex_name(&mut self, entry: u32) {
        let hash = self.store.hash_entry(entry);
        let Ok(found) = self.by_name.find_entry(hash, |&found| found == entry) else {
            panic!("every name is indexed");
        };
        found.remove();
    }

    /// Makes `key`, which no node has, the first name of a node.
    fn push_front(&mut self, slot: u32, key: &Key) {
        let node = &self.store.nodes[slot as usize];
        if !node.name.is_none() {
            // The current first name moves to the front of the further names.
            let (old_parent, old_name) = (node.parent, node.name);
            let bucket = self.bucket_of(slot);
            let link = self.store.new_link(old_parent, old_name, slot);
            self.store.further.entry(slot).or_default().insert(0, link);
            *self.bucket_mut(bucket) = LINK | link;
        }
        let name = self.store.new_name(key.name);
        self.store.set_alias(slot, key.parent, name);
        self.index_name(slot, key.hash);
    }

    /// Makes `key`, which no node has, the last name of a node.
    fn push_back(&mut self, slot: u32, key: &Key) {
        let name = self.store.new_name(key.name);
        if self.store.nodes[slot as usize].name.is_none() {
            self.store.set_alias(slot, key.parent, name);
            self.index_name(slot, key.hash);
            return;
        }
        let link = self.store.new_link(key.parent, name, slot);
        self.store.further.entry(slot).or_default().push(link);
        self.index_name(LINK | link, key.hash);
    }

    /// Makes the name at `entry` its node's first name. The other names keep their order.
    fn move_to_front(&mut self, entry: u32) {
        if entry & LINK == 0 {
            return;
        }
        let link = entry & !LINK;
        let slot = self.store.node_of(entry);
        let first_bucket = self.bucket_of(slot);
        let link_bucket = self.bucket_of(entry);

        let (first_parent, first_name) = self.store.alias(slot);
        let (link_parent, link_name) = self.store.alias(entry);
        self.store.set_alias(slot, link_parent, link_name);
        self.store.set_alias(entry, first_parent, first_name);
        let further = self
            .store
            .further
            .get_mut(&slot)
            .expect("node has further names");
        let position = further
            .iter()
            .position(|&index| index == link)
            .expect("link is listed");
        further.remove(position);
        further.insert(0, link);

        *self.bucket_mut(first_bucket) = entry;
        *self.bucket_mut(link_bucket) = slot;
    }

    /// Removes the name at `entry` from its node. A node without names stays.
    fn remove_alias(&mut self, entry: u32) {
        self.unindex_name(entry);
        let (_, name) = self.store.alias(entry);
        self.store.free_name(name);
        let slot = self.store.node_of(entry);

        if entry & LINK != 0 {
            let link = entry & !LINK;
            self.remove_further(slot, |index| index == link);
            self.store.free_link(link);
            return;
        }

        // The second name, if any, becomes the first.
        match self.remove_further(slot, |_| true) {
            Some(next) => {
                let bucket = self.bucket_of(LINK | next);
                let (parent, name) = self.store.alias(LINK | next);
                self.store.set_alias(slot, parent, name);
                self.store.free_link(next);
                *self.bucket_mut(bucket) = slot;
            }
            None => self.store.set_alias(slot, 0, Name::NONE),
        }
    }

    /// Removes the first of a node's further names that `matches` accepts, and returns it.
    fn remove_further(&mut self, slot: u32, matches: impl Fn(u32) -> bool) -> Option<u32> {
        let further = self.store.further.get_mut(&slot)?;
        let position = further.iter().position(|&index| matches(index))?;
        let index = further.remove(position);
        if further.is_empty() {
            self.store.further.remove(&slot);
        }
        Some(index)
    }

    /// Replaces the name at `entry` with `key`, which no node has.
    fn rename_alias(&mut self, entry: u32, key: &Key) {
        self.unindex_name(entry);
        let (_, old_name) = self.store.alias(entry);
        self.store.free_name(old_name);
        let name = self.store.new_name(key.name);
        self.store.set_alias(entry, key.parent, name);
        self.index_name(entry, key.hash);
    }

    /// Drops a node with all its names.
    fn remove_node(&mut self, slot: u32) {
        if let Some(further) = self.store.further.remove(&slot) {
            for link in further {
                self.unindex_name(LINK | link);
                let (_, name) = self.store.alias(LINK | link);
                self.store.free_name(name);
                self.store.free_link(link);
            }
        }
        let node = &self.store.nodes[slot as usize];
        let (id, name) = (node.id, node.name);
        if !name.is_none() {
            self.unindex_name(slot);
            self.store.free_name(name);
        }

        let Ok(found) = self
            .by_id
            .find_entry(self.store.hash_id(id), |&found| found == slot)
        else {
            panic!("every node is indexed");
        };
        found.remove();
        self.store.free_node(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_table_decodes_to_the_same_paths() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, OsStr::new("dir"), 10);
        table.lookup(10, OsStr::new("file"), 11);
        table.lookup(ROOT, OsStr::new("link"), 11);
        table.lookup(10, OsStr::new("file"), 11);

        let decoded = InodeTable::decode(&table.encode()).expect("decodes");
        assert_eq!(decoded.len(), table.len());
        assert_eq!(decoded.path(11), table.path(11));
        assert_eq!(decoded.path(10), Some(PathBuf::from("dir")));
        assert_eq!(decoded.child(ROOT, OsStr::new("link")), Some(11));
        assert_eq!(nlookup(&decoded, 11), 3);
        assert!(InodeTable::decode(&table.encode()[..7]).is_none());
    }

    #[test]
    fn hard_links_share_one_node() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, OsStr::new("a"), 10);
        table.lookup(ROOT, OsStr::new("b"), 10);
        table.remove_name(ROOT, OsStr::new("b"));
        assert_eq!(table.path(10), Some(PathBuf::from("a")));
    }

    #[test]
    fn rename_moves_descendant_paths() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, OsStr::new("d"), 2);
        table.lookup(2, OsStr::new("f"), 3);
        table.rename(ROOT, OsStr::new("d"), ROOT, OsStr::new("e"));
        assert_eq!(table.path(3), Some(PathBuf::from("e/f")));
    }

    #[test]
    fn unlinked_node_keeps_no_path() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, OsStr::new("a"), 10);
        table.remove_name(ROOT, OsStr::new("a"));
        assert_eq!(table.path(10), None);
    }

    #[test]
    fn forget_drops_node() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, OsStr::new("a"), 10);
        table.lookup(ROOT, OsStr::new("a"), 10);
        table.forget(10, 1);
        assert!(table.path(10).is_some());
        table.forget(10, 1);
        assert!(table.path(10).is_none());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn exchange_swaps_names() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, OsStr::new("a"), 10);
        table.lookup(ROOT, OsStr::new("b"), 11);
        table.exchange(ROOT, OsStr::new("a"), ROOT, OsStr::new("b"));
        assert_eq!(table.path(10), Some(PathBuf::from("b")));
        assert_eq!(table.path(11), Some(PathBuf::from("a")));
    }

    fn nlookup(table: &InodeTable, id: u64) -> u64 {
        let slot = table.find_node(id).expect("node exists");
        table.store.nodes[slot as usize].nlookup
    }

    fn name(text: &str) -> &OsStr {
        OsStr::new(text)
    }

    /// Returns the bytes of one node record as `encode` writes it.
    fn record(id: u64, nlookup: u64, aliases: &[(u64, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&nlookup.to_le_bytes());
        out.extend_from_slice(&(aliases.len() as u32).to_le_bytes());
        for (parent, name) in aliases {
            out.extend_from_slice(&parent.to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
        out
    }

    /// Asserts that `encoded` is exactly the `expected` records, in any order, because `encode`
    /// writes the nodes in no fixed order. Records start with distinct ids, so at most one
    /// expected record matches at each offset.
    fn assert_records(encoded: &[u8], expected: &[Vec<u8>]) {
        let mut left: Vec<&Vec<u8>> = expected.iter().collect();
        let mut rest = encoded;
        while !rest.is_empty() {
            let position = left
                .iter()
                .position(|record| rest.starts_with(record))
                .unwrap_or_else(|| {
                    panic!("unexpected record at {:?}", &rest[..rest.len().min(20)])
                });
            rest = &rest[left[position].len()..];
            left.remove(position);
        }
        assert!(
            left.is_empty(),
            "records missing from the encoding: {left:?}"
        );
    }

    #[test]
    fn hard_link_path_follows_latest_lookup() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("d"), 2);
        table.lookup(ROOT, name("a"), 10);
        table.lookup(2, name("b"), 10);
        table.lookup(ROOT, name("c"), 10);
        assert_eq!(table.path(10), Some(PathBuf::from("c")));

        table.lookup(2, name("b"), 10);
        assert_eq!(table.path(10), Some(PathBuf::from("d/b")));
        for (parent, alias) in [(ROOT, "a"), (2, "b"), (ROOT, "c")] {
            assert_eq!(table.child(parent, name(alias)), Some(10), "{alias}");
        }
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(2, 1, &[(ROOT, "d")]),
                record(10, 4, &[(2, "b"), (ROOT, "c"), (ROOT, "a")]),
            ],
        );
    }

    #[test]
    fn removing_first_hard_link_uses_next() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        table.lookup(ROOT, name("c"), 10);

        table.remove_name(ROOT, name("c"));
        assert_eq!(table.path(10), Some(PathBuf::from("b")));
        assert_eq!(table.child(ROOT, name("c")), None);

        table.remove_name(ROOT, name("b"));
        assert_eq!(table.path(10), Some(PathBuf::from("a")));

        table.remove_name(ROOT, name("a"));
        assert_eq!(table.path(10), None);
        assert_eq!(
            table.len(),
            2,
            "an unlinked node stays until the kernel forgets it"
        );
        assert_records(&table.encode(), &[record(ROOT, 1, &[]), record(10, 3, &[])]);

        table.lookup(ROOT, name("e"), 10);
        assert_eq!(table.path(10), Some(PathBuf::from("e")));
    }

    #[test]
    fn removing_middle_hard_link_keeps_order() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        table.lookup(ROOT, name("c"), 10);
        table.remove_name(ROOT, name("b"));
        table.remove_name(ROOT, name("missing"));
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(10, 3, &[(ROOT, "c"), (ROOT, "a")]),
            ],
        );
    }

    #[test]
    fn forget_drops_every_hard_link() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        table.learn(ROOT, name("c"), 10);
        table.lookup(ROOT, name("other"), 11);

        table.forget(10, 1);
        assert_eq!(table.path(10), Some(PathBuf::from("b")));
        table.forget(10, 5);
        assert_eq!(table.path(10), None);
        for alias in ["a", "b", "c"] {
            assert_eq!(table.child(ROOT, name(alias)), None, "{alias}");
        }
        assert_eq!(table.child(ROOT, name("other")), Some(11));
        assert_eq!(table.len(), 2);

        table.forget(ROOT, 1);
        table.forget(99, 1);
        assert_eq!(table.len(), 2);
        assert_eq!(table.path(ROOT), Some(PathBuf::new()));
    }

    #[test]
    fn lookup_takes_name_from_other_node() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        table.lookup(ROOT, name("b"), 11);
        assert_eq!(table.child(ROOT, name("b")), Some(11));
        assert_eq!(table.path(10), Some(PathBuf::from("a")));

        table.lookup(ROOT, name("a"), 11);
        assert_eq!(table.path(10), None);
        assert_eq!(table.len(), 3, "a node that lost its names stays");
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(10, 2, &[]),
                record(11, 2, &[(ROOT, "a"), (ROOT, "b")]),
            ],
        );
    }

    #[test]
    fn learn_appends_and_keeps_known_names() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.learn(ROOT, name("b"), 10);
        table.learn(ROOT, name("a"), 11);
        table.learn(ROOT, name("c"), 12);
        assert_eq!(table.path(10), Some(PathBuf::from("a")));
        assert_eq!(table.child(ROOT, name("a")), Some(10));
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(10, 1, &[(ROOT, "a"), (ROOT, "b")]),
                record(12, 0, &[(ROOT, "c")]),
            ],
        );

        table.forget(12, 0);
        assert_eq!(table.child(ROOT, name("c")), None);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn rename_of_hard_link_keeps_position() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("d"), 2);
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        table.lookup(ROOT, name("c"), 10);

        table.rename(ROOT, name("b"), 2, name("x"));
        assert_eq!(table.path(10), Some(PathBuf::from("c")));
        assert_eq!(table.child(ROOT, name("b")), None);
        assert_eq!(table.child(2, name("x")), Some(10));

        table.rename(ROOT, name("c"), 2, name("y"));
        assert_eq!(table.path(10), Some(PathBuf::from("d/y")));
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(2, 1, &[(ROOT, "d")]),
                record(10, 3, &[(2, "y"), (2, "x"), (ROOT, "a")]),
            ],
        );
    }

    #[test]
    fn rename_over_other_node_drops_its_name() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 11);
        table.lookup(ROOT, name("c"), 11);

        table.rename(ROOT, name("a"), ROOT, name("c"));
        assert_eq!(table.child(ROOT, name("c")), Some(10));
        assert_eq!(table.child(ROOT, name("a")), None);
        assert_eq!(table.path(11), Some(PathBuf::from("b")));
        assert_eq!(table.path(10), Some(PathBuf::from("c")));
    }

    #[test]
    fn rename_onto_own_hard_link_merges() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        table.lookup(ROOT, name("c"), 10);

        table.rename(ROOT, name("a"), ROOT, name("c"));
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(10, 3, &[(ROOT, "b"), (ROOT, "c")]),
            ],
        );

        table.rename(ROOT, name("b"), ROOT, name("b"));
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(10, 3, &[(ROOT, "b"), (ROOT, "c")]),
            ],
        );
    }

    #[test]
    fn rename_of_unknown_name_drops_destination() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.rename(ROOT, name("unknown"), ROOT, name("a"));
        assert_eq!(table.child(ROOT, name("a")), None);
        assert_eq!(table.path(10), None);
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn exchange_with_hard_links() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("d"), 2);
        table.lookup(ROOT, name("a"), 10);
        table.lookup(2, name("b"), 10);
        table.lookup(ROOT, name("c"), 11);
        table.lookup(2, name("e"), 11);

        table.exchange(2, name("b"), ROOT, name("c"));
        assert_eq!(table.child(ROOT, name("c")), Some(10));
        assert_eq!(table.child(2, name("b")), Some(11));
        assert_eq!(table.path(10), Some(PathBuf::from("c")));
        assert_eq!(table.path(11), Some(PathBuf::from("d/e")));
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(2, 1, &[(ROOT, "d")]),
                record(10, 2, &[(ROOT, "c"), (ROOT, "a")]),
                record(11, 2, &[(2, "e"), (2, "b")]),
            ],
        );
    }

    #[test]
    fn exchange_with_unknown_name_moves() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        table.exchange(ROOT, name("unknown"), ROOT, name("a"));
        assert_eq!(table.child(ROOT, name("a")), None);
        assert_eq!(table.child(ROOT, name("unknown")), Some(10));
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(10, 2, &[(ROOT, "b"), (ROOT, "unknown")]),
            ],
        );
    }

    #[test]
    fn encoding_has_fixed_layout() {
        let long = "n".repeat(300);
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("dir"), 0x0102_0304_0506_0708);
        table.lookup(0x0102_0304_0506_0708, name(&long), 11);
        table.lookup(ROOT, name("link"), 11);
        table.lookup(ROOT, name("link"), 11);

        let encoded = table.encode();
        let long_record = record(11, 3, &[(ROOT, "link"), (0x0102_0304_0506_0708, &long)]);
        assert_records(
            &encoded,
            &[
                record(ROOT, 1, &[]),
                record(0x0102_0304_0506_0708, 1, &[(ROOT, "dir")]),
                long_record.clone(),
            ],
        );
        // The layout spelled out once, so that the helper above cannot drift along with it.
        let mut spelled = vec![11, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0];
        spelled.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 4, 0]);
        spelled.extend_from_slice(b"link");
        spelled.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1, 0x2c, 0x01]);
        spelled.extend_from_slice(long.as_bytes());
        assert_eq!(long_record, spelled);

        let decoded = InodeTable::decode(&encoded).expect("decodes");
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded.path(11), Some(PathBuf::from("link")));
        assert_eq!(decoded.child(0x0102_0304_0506_0708, name(&long)), Some(11));
        assert_records(
            &decoded.encode(),
            &[
                record(ROOT, 1, &[]),
                record(0x0102_0304_0506_0708, 1, &[(ROOT, "dir")]),
                long_record,
            ],
        );
    }

    #[test]
    fn decode_rejects_cut_records() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        let encoded = table.encode();
        let root_len = record(ROOT, 1, &[]).len();
        let node_len = record(10, 2, &[(ROOT, "b"), (ROOT, "a")]).len();
        assert_eq!(encoded.len(), root_len + node_len);
        let first_len = if encoded.starts_with(&ROOT.to_le_bytes()) {
            root_len
        } else {
            node_len
        };

        for cut in 0..=encoded.len() {
            let at_boundary = [0, first_len, encoded.len()].contains(&cut);
            let decoded = InodeTable::decode(&encoded[..cut]);
            assert_eq!(decoded.is_some(), at_boundary, "cut at {cut}");
        }
    }

    #[test]
    fn decode_replaces_root_and_keeps_learned_nodes() {
        let mut table = InodeTable::new();
        table.learn(ROOT, name("a"), 10);
        let decoded = InodeTable::decode(&table.encode()).expect("decodes");
        assert_eq!(decoded.child(ROOT, name("a")), Some(10));
        assert_records(
            &decoded.encode(),
            &[record(ROOT, 1, &[]), record(10, 0, &[(ROOT, "a")])],
        );
        assert!(InodeTable::decode(&[]).is_some_and(|empty| empty.len() == 1));
    }

    #[test]
    fn path_depth_is_limited() {
        let mut table = InodeTable::new();
        let mut parent = ROOT;
        for id in 2..4098 {
            table.lookup(parent, name("d"), id);
            parent = id;
        }
        let path = table.path(4097).expect("4096 names deep");
        assert_eq!(path.components().count(), 4096);
        table.lookup(4097, name("d"), 4098);
        assert_eq!(table.path(4098), None);

        table.lookup(21, name("loop"), 20);
        assert_eq!(table.path(21), None);
    }

    #[test]
    fn exchange_of_own_hard_links_swaps_order() {
        let mut table = InodeTable::new();
        table.lookup(ROOT, name("a"), 10);
        table.lookup(ROOT, name("b"), 10);
        table.exchange(ROOT, name("a"), ROOT, name("b"));
        assert_eq!(table.child(ROOT, name("a")), Some(10));
        assert_eq!(table.child(ROOT, name("b")), Some(10));
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(10, 2, &[(ROOT, "a"), (ROOT, "b")]),
            ],
        );
        check_indexes(&table);
    }

    #[test]
    fn decode_settles_repeated_nodes_and_names() {
        let mut bytes = record(10, 1, &[(ROOT, "a"), (ROOT, "b"), (ROOT, "a")]);
        bytes.extend(record(11, 2, &[(ROOT, "b")]));
        bytes.extend(record(12, 3, &[(ROOT, "c")]));
        bytes.extend(record(12, 4, &[(ROOT, "d")]));

        let table = InodeTable::decode(&bytes).expect("decodes");
        check_indexes(&table);
        assert_records(
            &table.encode(),
            &[
                record(ROOT, 1, &[]),
                record(10, 1, &[(ROOT, "a")]),
                record(11, 2, &[(ROOT, "b")]),
                record(12, 4, &[(ROOT, "d")]),
            ],
        );
        assert_eq!(table.child(ROOT, name("c")), None);
    }

    #[test]
    fn freed_slots_and_long_names_are_reused() {
        let long = "x".repeat(40);
        let mut table = InodeTable::new();
        for round in 0..3 {
            for id in 10..110 {
                let alias = format!("{long}{id}");
                table.lookup(ROOT, name(&alias), id);
                table.lookup(ROOT, name(&format!("link{id}")), id);
            }
            assert_eq!(table.len(), 101, "round {round}");
            for id in 10..110 {
                table.forget(id, 2);
            }
            assert_eq!(table.len(), 1, "round {round}");
            check_indexes(&table);
        }
        assert_eq!(table.store.nodes.len(), 101);
        assert_eq!(table.store.long_names.len(), 100);
        assert_eq!(table.store.links.len(), 100);
        assert!(table.store.further.is_empty());
    }

    /// Checks that the indexes list every node and name once, and that every name is listed
    /// under its own key.
    fn check_indexes(table: &InodeTable) {
        let store = &table.store;
        let mut nodes = 0;
        let mut names = 0;
        for (slot, node) in store.nodes.iter().enumerate() {
            if node.name.tag == FREE_SLOT {
                assert!(!store.further.contains_key(&(slot as u32)));
                continue;
            }
            nodes += 1;
            assert_eq!(table.find_node(node.id), Some(slot as u32));

            let further = store.further_names(slot as u32);
            assert!(!node.name.is_none() || further.is_empty());
            assert!(!store.further.get(&(slot as u32)).is_some_and(Vec::is_empty));
            let first = (!node.name.is_none()).then_some(slot as u32);
            for entry in first
                .into_iter()
                .chain(further.iter().map(|&link| LINK | link))
            {
                names += 1;
                assert_eq!(store.node_of(entry), slot as u32);
                let (parent, name) = store.alias(entry);
                let key = table.key(parent, store.bytes(&name));
                assert_eq!(table.find_name(&key), Some(entry));
            }
        }
        assert_eq!(table.by_id.len(), nodes);
        assert_eq!(table.by_name.len(), names);
    }

    /// The HashMap-based table that the compact one replaced, kept as the model that the
    /// compact table must match operation for operation.
    mod model {
        use std::collections::HashMap;
        use std::ffi::{OsStr, OsString};
        use std::os::unix::ffi::OsStrExt;
        use std::path::PathBuf;

        use super::super::ROOT;

        pub type Alias = (u64, OsString);

        pub struct Node {
            pub aliases: Vec<Alias>,
            pub nlookup: u64,
        }

        pub struct Table {
            pub nodes: HashMap<u64, Node>,
            pub children: HashMap<Alias, u64>,
        }

        impl Table {
            pub fn new() -> Table {
                let root = Node {
                    aliases: Vec::new(),
                    nlookup: 1,
                };
                Table {
                    nodes: HashMap::from([(ROOT, root)]),
                    children: HashMap::new(),
                }
            }

            pub fn path(&self, id: u64) -> Option<PathBuf> {
                let mut names: Vec<&OsStr> = Vec::new();
                let mut current = id;
                while current != ROOT {
                    let node = self.nodes.get(&current)?;
                    let (parent, name) = node.aliases.first()?;
                    names.push(name);
                    current = *parent;
                    if names.len() > 4096 {
                        return None;
                    }
                }
                let mut path = PathBuf::new();
                for name in names.iter().rev() {
                    path.push(name);
                }
                Some(path)
            }

            fn node(&mut self, id: u64) -> &mut Node {
                self.nodes.entry(id).or_insert_with(|| Node {
                    aliases: Vec::new(),
                    nlookup: 0,
                })
            }

            pub fn lookup(&mut self, parent: u64, name: &OsStr, id: u64) {
                let alias = (parent, name.to_os_string());
                self.node(id);
                if let Some(previous) = self.children.insert(alias.clone(), id) {
                    if previous != id {
                        self.drop_alias(previous, &alias);
                    }
                }
                let node = self.node(id);
                node.aliases.retain(|a| a != &alias);
                node.aliases.insert(0, alias);
                node.nlookup += 1;
            }

            pub fn learn(&mut self, parent: u64, name: &OsStr, id: u64) {
                let alias = (parent, name.to_os_string());
                if self.children.contains_key(&alias) {
                    return;
                }
                self.children.insert(alias.clone(), id);
                self.node(id).aliases.push(alias);
            }

            pub fn forget(&mut self, id: u64, count: u64) {
                if id == ROOT {
                    return;
                }
                let Some(node) = self.nodes.get_mut(&id) else {
                    return;
                };
                node.nlookup = node.nlookup.saturating_sub(count);
                if node.nlookup > 0 {
                    return;
                }
                let node = self.nodes.remove(&id).expect("node exists");
                for alias in node.aliases {
                    if self.children.get(&alias) == Some(&id) {
                        self.children.remove(&alias);
                    }
                }
            }

            fn drop_alias(&mut self, id: u64, alias: &Alias) {
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.aliases.retain(|a| a != alias);
                }
            }

            pub fn remove_name(&mut self, parent: u64, name: &OsStr) {
                let alias = (parent, name.to_os_string());
                if let Some(id) = self.children.remove(&alias) {
                    self.drop_alias(id, &alias);
                }
            }

            pub fn rename(&mut self, parent: u64, name: &OsStr, new_parent: u64, new_name: &OsStr) {
                let from = (parent, name.to_os_string());
                let to = (new_parent, new_name.to_os_string());
                let Some(id) = self.children.remove(&from) else {
                    self.remove_name(new_parent, new_name);
                    return;
                };
                if let Some(replaced) = self.children.remove(&to) {
                    self.drop_alias(replaced, &to);
                }
                if let Some(node) = self.nodes.get_mut(&id) {
                    for alias in node.aliases.iter_mut() {
                        if *alias == from {
                            *alias = to.clone();
                        }
                    }
                }
                self.children.insert(to, id);
            }

            pub fn exchange(
                &mut self,
                parent: u64,
                name: &OsStr,
                new_parent: u64,
                new_name: &OsStr,
            ) {
                let a = (parent, name.to_os_string());
                let b = (new_parent, new_name.to_os_string());
                let id_a = self.children.remove(&a);
                let id_b = self.children.remove(&b);
                for (id, from, to) in [(id_a, &a, &b), (id_b, &b, &a)] {
                    let Some(id) = id else { continue };
                    if let Some(node) = self.nodes.get_mut(&id) {
                        for alias in node.aliases.iter_mut() {
                            if alias == from {
                                *alias = to.clone();
                            }
                        }
                    }
                    self.children.insert(to.clone(), id);
                }
            }

            pub fn encode(&self) -> Vec<u8> {
                let mut out = Vec::new();
                for (id, node) in &self.nodes {
                    out.extend_from_slice(&id.to_le_bytes());
                    out.extend_from_slice(&node.nlookup.to_le_bytes());
                    out.extend_from_slice(&(node.aliases.len() as u32).to_le_bytes());
                    for (parent, name) in &node.aliases {
                        let name = name.as_bytes();
                        out.extend_from_slice(&parent.to_le_bytes());
                        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                        out.extend_from_slice(name);
                    }
                }
                out
            }

            /// Rebuilds a table from well-formed `encode` output.
            pub fn decode(encoded: &[u8]) -> Table {
                let mut table = Table::new();
                for (id, nlookup, aliases) in super::parse_records(encoded) {
                    let aliases: Vec<Alias> = aliases
                        .into_iter()
                        .map(|(parent, name)| (parent, OsStr::from_bytes(&name).to_os_string()))
                        .collect();
                    for alias in &aliases {
                        table.children.insert(alias.clone(), id);
                    }
                    table.nodes.insert(id, Node { aliases, nlookup });
                }
                table
            }
        }
    }

    type Record = (u64, u64, Vec<(u64, Vec<u8>)>);

    /// Splits well-formed `encode` output into its node records, sorted by id.
    fn parse_records(mut bytes: &[u8]) -> Vec<Record> {
        fn take<const N: usize>(bytes: &mut &[u8]) -> [u8; N] {
            let (head, rest) = bytes.split_at(N);
            *bytes = rest;
            head.try_into().expect("N bytes")
        }
        let mut records = Vec::new();
        while !bytes.is_empty() {
            let id = u64::from_le_bytes(take(&mut bytes));
            let nlookup = u64::from_le_bytes(take(&mut bytes));
            let count = u32::from_le_bytes(take(&mut bytes));
            let mut aliases = Vec::new();
            for _ in 0..count {
                let parent = u64::from_le_bytes(take(&mut bytes));
                let len = u16::from_le_bytes(take(&mut bytes)) as usize;
                let (name, rest) = bytes.split_at(len);
                bytes = rest;
                aliases.push((parent, name.to_vec()));
            }
            records.push((id, nlookup, aliases));
        }
        records.sort_by_key(|record| record.0);
        records
    }

    /// A xorshift64 generator, so that a failing sequence replays from its seed.
    struct Random(u64);

    impl Random {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound
        }
    }

    #[test]
    fn random_operations_match_model() {
        let long = "long-".repeat(4);
        let longest = "z".repeat(255);
        let names = ["a", "b", "c", "", long.as_str(), longest.as_str()];
        let ids = [ROOT, 2, 3, 4, 5, 6, 7, 8, 9];

        for seed in 1..=10u64 {
            let mut random = Random(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut table = InodeTable::new();
            let mut model = model::Table::new();
            for step in 0..2_000 {
                let id = ids[1 + random.below(ids.len() as u64 - 1) as usize];
                let parent = ids[random.below(3) as usize];
                let name = name(names[random.below(names.len() as u64) as usize]);
                let new_parent = ids[random.below(3) as usize];
                let new_name = OsStr::new(names[random.below(names.len() as u64) as usize]);
                let operation = random.below(100);
                match operation {
                    0..=29 => {
                        table.lookup(parent, name, id);
                        model.lookup(parent, name, id);
                    }
                    30..=39 => {
                        table.learn(parent, name, id);
                        model.learn(parent, name, id);
                    }
                    40..=54 => {
                        let count = random.below(3);
                        table.forget(id, count);
                        model.forget(id, count);
                    }
                    55..=66 => {
                        table.remove_name(parent, name);
                        model.remove_name(parent, name);
                    }
                    67..=81 => {
                        table.rename(parent, name, new_parent, new_name);
                        model.rename(parent, name, new_parent, new_name);
                    }
                    82..=95 => {
                        // The model breaks its own names on an exchange of two names of one
                        // node, which the kernel never sends.
                        let a = model.children.get(&(parent, name.to_os_string()));
                        let b = model.children.get(&(new_parent, new_name.to_os_string()));
                        if a.is_some() && a == b {
                            continue;
                        }
                        table.exchange(parent, name, new_parent, new_name);
                        model.exchange(parent, name, new_parent, new_name);
                    }
                    _ => {
                        table = InodeTable::decode(&table.encode()).expect("decodes");
                        model = model::Table::decode(&model.encode());
                    }
                }

                let context = format!("seed {seed}, step {step}, operation {operation}");
                check_indexes(&table);
                assert_eq!(table.len(), model.nodes.len(), "{context}");
                assert_eq!(
                    parse_records(&table.encode()),
                    parse_records(&model.encode()),
                    "{context}"
                );
                // Equal records mean equal first names, so paths are compared every 16 steps
                // only, because on a cycle of parents path() takes 4,097 steps to return `None`.
                if step % 16 == 0 {
                    for id in ids.into_iter().chain([99]) {
                        assert_eq!(table.path(id), model.path(id), "{context}, id {id}");
                    }
                }
                for parent in ids {
                    for child in names {
                        let expected = model.children.get(&(parent, child.into())).copied();
                        assert_eq!(
                            table.child(parent, OsStr::new(child)),
                            expected,
                            "{context}, parent {parent}, name {child:?}"
                        );
                    }
                }
            }
        }
    }
}
