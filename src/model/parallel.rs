//! Work split across the machine's cores, in order: the few steps of a full sync that cost the
//! same for each of thousands of environments or files (rendering and verifying environments,
//! encrypting their credentials, hashing and deflating the pack's blobs).

/// Below this many items the work stays on the calling thread: a thread costs more than a few
/// environments' work.
pub const PARALLEL_FROM: usize = 64;

/// Parts a core takes in turn in [`by_parts`], per core: enough that a core slower than the
/// others (see below) takes fewer, few enough that each part's own cost stays small.
const PARTS_PER_CORE: usize = 8;

/// `work` of consecutive parts of `items`, on every core, the answers in the parts' order. The
/// parts are several per core, and each core takes the next part not yet taken: in a full sync of
/// 10,000 the calling thread rendered its half in twice the time the other core took for its own
/// (its malloc arena holds what the run freed before: `_int_malloc` was a quarter of its render
/// against a seventh of the other's), and the other core then waited. Fewer than
/// [`PARALLEL_FROM`] items, or one core, make one part, worked on here. A panic in a part is
/// raised again here.
pub fn by_parts<T: Sync, R: Send>(items: &[T], work: impl Fn(&[T]) -> R + Sync) -> Vec<R> {
    let cores = cores();
    if cores == 1 || items.len() < PARALLEL_FROM {
        return vec![work(items)];
    }
    let parts: Vec<&[T]> = items
        .chunks(items.len().div_ceil(cores * PARTS_PER_CORE).max(PARALLEL_FROM / 4))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let take = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(part) = parts.get(i) else {
                return done;
            };
            done.push((i, work(part)));
        }
    };
    let mut answers: Vec<(usize, R)> = on_cores(cores.min(parts.len()), &take).into_iter().flatten().collect();
    answers.sort_unstable_by_key(|(i, _)| *i);
    answers.into_iter().map(|(_, answer)| answer).collect()
}

/// `work` of consecutive parts of `items`, one part per core: for work whose part costs
/// something of its own to start (a compressor's tables). One part is worked on the calling
/// thread, each other on a scoped thread of its own, and the answers come in the parts' order;
/// otherwise as [`by_parts`].
///
/// The calling thread works (here and in [`by_parts`]) for memory more than for the thread it
/// saves: glibc's malloc gives each new thread an arena of its own, and memory freed into a
/// thread's arena serves only that arena's later allocations. With every part on a new thread, a
/// full sync of 10,000 peaked at 145 MB, not 138.
pub fn by_cores<T: Sync, R: Send>(items: &[T], work: impl Fn(&[T]) -> R + Sync) -> Vec<R> {
    let cores = cores();
    if cores == 1 || items.len() < PARALLEL_FROM {
        return vec![work(items)];
    }
    let parts: Vec<&[T]> = items.chunks(items.len().div_ceil(cores)).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let one = || {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (i, work(parts[i]))
    };
    let mut answers = on_cores(parts.len(), &one);
    answers.sort_unstable_by_key(|(i, _)| *i);
    answers.into_iter().map(|(_, answer)| answer).collect()
}

/// `run` on `threads` threads at once, the calling thread one of them; what each gave, the
/// calling thread's first.
fn on_cores<R: Send>(threads: usize, run: &(impl Fn() -> R + Sync)) -> Vec<R> {
    std::thread::scope(|scope| {
        let others: Vec<_> = (1..threads).map(|_| scope.spawn(run)).collect();
        let mut all = Vec::with_capacity(threads);
        all.push(run());
        all.extend(
            others
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))),
        );
        all
    })
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `f` of each of `items`, in order, on every core (see [`by_parts`]).
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    by_parts(items, |part| part.iter().map(&f).collect::<Vec<_>>())
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_cover_every_item_once_in_order() {
        for len in [
            0,
            1,
            PARALLEL_FROM - 1,
            PARALLEL_FROM,
            PARALLEL_FROM + 1,
            1_001,
            100_003,
        ] {
            let items: Vec<usize> = (0..len).collect();
            for parts in [by_parts(&items, <[usize]>::to_vec), by_cores(&items, <[usize]>::to_vec)] {
                assert_eq!(parts.concat(), items, "{len} items");
                if len < PARALLEL_FROM {
                    assert_eq!(parts.len(), 1, "{len} items stay in one part");
                }
            }
            let cores = cores();
            if len >= PARALLEL_FROM && cores > 1 {
                assert_eq!(by_cores(&items, <[usize]>::to_vec).len(), cores.min(len));
                assert!(by_parts(&items, <[usize]>::to_vec).len() > cores, "{len} items");
            }
        }
    }

    #[test]
    fn a_core_that_is_slower_takes_fewer_parts() {
        if cores() < 2 {
            return;
        }
        // The calling thread's parts take ten times as long: it works on fewer of them.
        let caller = std::thread::current().id();
        let items: Vec<usize> = (0..PARALLEL_FROM * 64).collect();
        let parts = by_parts(&items, |part| {
            let here = std::thread::current().id() == caller;
            std::thread::sleep(std::time::Duration::from_millis(if here { 20 } else { 2 }));
            (here, part.len())
        });
        let mine: usize = parts.iter().filter(|(here, _)| *here).map(|(_, n)| n).sum();
        assert!(
            mine < items.len() / 3,
            "the slow caller worked on {mine} of {}",
            items.len()
        );
    }

    #[test]
    fn a_map_is_every_item_in_order() {
        let items: Vec<usize> = (0..PARALLEL_FROM * 3 + 1).collect();
        let doubled: Vec<usize> = items.iter().map(|i| i * 2).collect();
        assert_eq!(map(&items, |i| i * 2), doubled);
    }

    #[test]
    fn a_panic_in_a_part_reaches_the_caller() {
        let items: Vec<usize> = (0..PARALLEL_FROM * 4).collect();
        let check = |part: &[usize]| assert!(!part.contains(&(PARALLEL_FROM * 3)), "item reached");
        assert!(std::panic::catch_unwind(|| by_parts(&items, check)).is_err());
        assert!(std::panic::catch_unwind(|| by_cores(&items, check)).is_err());
    }
}
