//! Heap use of the node table for a walk of 1,000,000 files.
//!
//! A counting global allocator tracks the bytes that the live allocations of the test's thread
//! requested. Counting one thread keeps the figure the same on every run, because the test
//! harness allocates on other threads. The figure leaves out the allocator's own overhead per
//! allocation, so the test also prints the number of allocations. The timings it prints are
//! informal and not asserted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::OsStr;
use std::time::Instant;

use dualfs::fs::inode::{InodeTable, ROOT};

struct CountingAllocator;

thread_local! {
    // Signed, because a thread may free memory that another thread allocated.
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
    static LIVE_ALLOCATIONS: Cell<isize> = const { Cell::new(0) };
}

/// Adds to this thread's counters; does nothing while the thread is being torn down.
fn count(bytes: isize, allocations: isize) {
    let _ = LIVE_BYTES.try_with(|live| live.set(live.get() + bytes));
    let _ = LIVE_ALLOCATIONS.try_with(|live| live.set(live.get() + allocations));
}

fn live_bytes() -> isize {
    LIVE_BYTES.with(Cell::get)
}

fn live_allocations() -> isize {
    LIVE_ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is forwarded to the system allocator unchanged. The counters are
// const-initialized thread-locals without destructors, so updating them does not allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize, 1);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size() as isize, 1);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize), -1);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_ptr = unsafe { System.realloc(ptr, layout, new_size) };
        if !new_ptr.is_null() {
            count(new_size as isize - layout.size() as isize, 0);
        }
        new_ptr
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const DIRECTORIES: u64 = 1_000;
const FILES_PER_DIRECTORY: u64 = 1_000;

/// Maximum heap bytes per node. The table has a 40-byte slot per node in a `Vec` with room for
/// 1,048,576 slots at 1,001,001 nodes, which is 42 bytes per node. Its two `hashbrown` indexes
/// have 2,097,152 buckets of 4 bytes and a control byte each, 21 bytes per node for both, so
/// the table needs about 63 bytes per node. At 72 bytes a table of 1,000,000 nodes stays below 70 MiB, its share
/// of the daemon's target of 128 MiB.
const MAX_BYTES_PER_NODE: usize = 72;

/// Returns the inode number of the `index`-th node: sparse, as backing inode numbers are.
fn inode_number(index: u64) -> u64 {
    1_000_000 + index * 7_919
}

fn directory_name(index: u64) -> String {
    format!("d{index:06}")
}

fn file_name(index: u64) -> String {
    format!("f{index:06}")
}

#[test]
fn million_nodes_fit_the_memory_bound() {
    let before = live_bytes();
    let allocations_before = live_allocations();
    let mut table = InodeTable::new();

    let started = Instant::now();
    let mut ids = Vec::with_capacity((DIRECTORIES * (FILES_PER_DIRECTORY + 1)) as usize);
    for directory in 0..DIRECTORIES {
        let directory_id = inode_number(directory * (FILES_PER_DIRECTORY + 1));
        table.lookup(ROOT, OsStr::new(&directory_name(directory)), directory_id);
        ids.push(directory_id);
        for file in 0..FILES_PER_DIRECTORY {
            let file_id = inode_number(directory * (FILES_PER_DIRECTORY + 1) + file + 1);
            table.lookup(directory_id, OsStr::new(&file_name(file)), file_id);
            ids.push(file_id);
        }
    }
    let lookup_time = started.elapsed();

    // The id list is the test's own, so it is left out of the table's figure.
    let ids_bytes = ids.capacity() * std::mem::size_of::<u64>();
    let table_bytes = (live_bytes() - before) as usize - ids_bytes;
    let allocations = live_allocations() - allocations_before - 1;
    let nodes = table.len();
    let bytes_per_node = table_bytes / nodes;

    let started = Instant::now();
    let mut path_bytes = 0usize;
    for &id in &ids {
        let path = table.path(id).expect("every looked-up node has a path");
        path_bytes += path.as_os_str().len();
    }
    let path_time = started.elapsed();

    println!(
        "node table: {nodes} nodes, {table_bytes} bytes in {allocations} allocations, \
         {bytes_per_node} bytes per node"
    );
    println!(
        "{} lookups in {lookup_time:?}, {} path() calls in {path_time:?}",
        ids.len(),
        ids.len()
    );

    assert_eq!(nodes as u64, DIRECTORIES * (FILES_PER_DIRECTORY + 1) + 1);
    assert_eq!(
        path_bytes as u64,
        DIRECTORIES * FILES_PER_DIRECTORY * 15 + DIRECTORIES * 7
    );
    assert!(
        bytes_per_node < MAX_BYTES_PER_NODE,
        "the node table uses {bytes_per_node} bytes per node, expected below {MAX_BYTES_PER_NODE}"
    );
}
