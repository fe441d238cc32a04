//! Configuration a pool cannot be made from is refused by a named error, before any system call
//! turns it into a bare errno.

use fbuf::PoolConfig;

/// A pool name `memfd_create` would refuse (a NUL byte, more than it holds) is refused by name,
/// not as a bare `EINVAL` from the kernel; the longest it takes works.
#[test]
fn a_pool_name_no_memfd_can_carry_is_refused_by_name() {
    use fbuf::PoolCreateError;
    let long = "n".repeat(fbuf::MAX_POOL_NAME + 1);
    for (name, why) in [("a\0b", "NUL"), (long.as_str(), "longer")] {
        match PoolConfig::builder().name(name).create() {
            Err(PoolCreateError::BadName {
                name: shown,
                why: w,
            }) => {
                assert!(w.contains(why), "{w}");
                assert!(
                    shown.len() <= 64,
                    "the name is shown cut: {} bytes",
                    shown.len()
                );
            }
            other => panic!("{name:.20?}: {:?}", other.err()),
        }
    }
    let longest = "m".repeat(fbuf::MAX_POOL_NAME);
    assert!(PoolConfig::builder().name(&longest).create().is_ok());
}
