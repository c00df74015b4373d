//! Crash consistency: the real binary killed with SIGKILL at random instants while it
//! refreshes, consolidates, writes bitmaps and stores responses, then started again on the
//! same data; mirrors, stored responses and clones are checked after every kill (see
//! `gitcache_testkit::crash`). `cargo xtask crash --kills N` runs the long campaign.

#[test]
fn twenty_kills_leave_every_mirror_and_stored_response_whole() {
    let report = gitcache_testkit::crash::campaign(
        std::path::Path::new(env!("CARGO_BIN_EXE_gitcache-server")),
        20,
        1251,
        |_| {},
    )
    .unwrap();
    assert_eq!(report.kills, 20);
    assert!(report.mirrors_checked >= 20, "{report:?}");
    assert!(
        report.responses_checked > 0,
        "no stored response was checked: {report:?}"
    );
    assert_eq!(report.clones_checked, 2 * 20, "{report:?}");
}
