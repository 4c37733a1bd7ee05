use super::*;

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

fn request() -> BuildRequest {
    BuildRequest {
        registry: Some("zot.example:5000".into()),
        image_repo: "org/app".into(),
        tags: vec!["1.2".into(), "latest".into()],
        cache: CacheMode::Max,
        ..Default::default()
    }
}

fn settled(to: &[&str], from: &[&str]) -> Result<BuildRequest, String> {
    let mut req = request();
    req.cache_to = exports(&strings(to))?;
    req.cache_from = imports(&strings(from))?;
    settle(&mut req, "cache/buildkit-launcher/history")?;
    Ok(req)
}

#[test]
fn references_follow_the_distribution_grammar() {
    let r = CacheRef::parse("zot.example:5000/cache/org/app:main-1").unwrap();
    assert_eq!(
        (r.host.as_str(), r.path.as_str(), r.tag.as_deref()),
        ("zot.example:5000", "cache/org/app", Some("main-1"))
    );
    assert_eq!(r.to_string(), "zot.example:5000/cache/org/app:main-1");
    for ok in [
        "localhost/a",
        "127.0.0.1:5000/a/b_c/d__e/f-g---h",
        "[::1]:5000/a:T_1.x",
        "zot.example/a.b",
    ] {
        assert!(CacheRef::parse(ok).is_ok(), "{ok}");
    }
    for (bad, why) in [
        ("org/app:cache", "would mean Docker Hub"),
        ("app", "not a registry reference"),
        ("zot.example/Org/app", "not a repository path"),
        ("zot.example/a//b", "not a repository path"),
        ("zot.example/a-/b", "not a repository path"),
        ("zot.example/a___b", "not a repository path"),
        ("zot.example/a:-x", "not a tag"),
        ("zot.example/a@sha256:00", "a digest cannot hold a cache"),
        ("zot.example:99999/a", "not a registry HOST[:PORT]"),
        ("zot_x.example/a", "not a registry HOST[:PORT]"),
        ("user:pw@zot.example/a", "a digest"),
        ("zot.example/a b", "not a repository path"),
        ("zot.example/a\nb", "not a repository path"),
        ("zot.example/a,push=true", "not a repository path"),
    ] {
        let err = CacheRef::parse(bad).unwrap_err();
        assert!(err.contains(why), "{bad}: {err}");
    }
    let long = format!("zot.example/{}", "a".repeat(250));
    assert!(CacheRef::parse(&long).unwrap_err().contains("255"));
}

#[test]
fn lists_split_into_caches_whatever_the_order_of_keys() {
    assert_eq!(
        split("type=registry,ref=h.x/a,mode=max,h.x/b, h.x/c"),
        ["type=registry,ref=h.x/a,mode=max", "h.x/b", "h.x/c"]
    );
    assert_eq!(
        split("ref=h.x/a,type=registry,ref=h.x/b,type=registry"),
        ["ref=h.x/a,type=registry", "ref=h.x/b,type=registry"]
    );
    // A bare piece after a KEY=VALUE cache is a cache of its own, never part of the last one.
    assert_eq!(
        split("type=registry,ref=h.x/a,oops"),
        ["type=registry,ref=h.x/a", "oops"]
    );
    assert!(split(" , ").is_empty());
}

#[test]
fn both_forms_parse_and_mode_defaults_to_max() {
    let to = exports(&strings(&[
        "zot.example:5000/cache/a:main",
        "type=registry,ref=zot.example:5000/cache/b,mode=min",
        "TYPE=registry,REF=zot.example:5000/cache/c",
    ]))
    .unwrap();
    let modes: Vec<CacheMode> = to.iter().map(|e| e.mode).collect();
    assert_eq!(modes, [CacheMode::Max, CacheMode::Min, CacheMode::Max]);
    assert_eq!(to[1].reference.to_string(), "zot.example:5000/cache/b");
    let from = imports(&strings(&[
        "type=registry,ref=other.example/x:y,zot.example:5000/z",
    ]))
    .unwrap();
    assert_eq!(from.len(), 2);
}

#[test]
fn refusals_name_the_setting_and_the_value_on_one_line() {
    for (to, value, why) in [
        (
            true,
            "type=local,dest=/etc",
            "type=\"local\" is not accepted",
        ),
        (
            false,
            "type=local,src=/root",
            "type=\"local\" is not accepted",
        ),
        (true, "type=gha", "type=\"gha\" is not accepted"),
        (
            true,
            "type=registry,ref=zot.example/a,dest=/x",
            "unknown key \"dest\"",
        ),
        (
            true,
            "type=registry,ref=zot.example/a,registry.insecure=true",
            "unknown key",
        ),
        (
            true,
            "type=registry,ref=zot.example/a,mode=all",
            "mode=\"all\" is not min or max",
        ),
        (
            false,
            "type=registry,ref=zot.example/a,mode=max",
            "mode is for cache_to only",
        ),
        (true, "ref=zot.example/a", "needs type=registry"),
        (true, "type=registry,mode=max", "needs ref="),
        (
            true,
            "type=registry,\"ref=zot.example/a,push=true\"",
            "quotes are not accepted",
        ),
        (
            true,
            "type=registry,ref=zot.example/a'; rm -rf /; '",
            "quotes are not accepted",
        ),
        (
            true,
            "type=registry,ref=zot.example/$(id)",
            "not a repository path",
        ),
        (
            true,
            "type=registry,ref=zot.example/a\nerror: forged",
            "not a repository path",
        ),
    ] {
        let values = strings(&[value]);
        let err = if to {
            exports(&values).map(|_| ()).unwrap_err()
        } else {
            imports(&values).map(|_| ()).unwrap_err()
        };
        let setting = if to {
            "--cache-to (cache_to) "
        } else {
            "--cache-from (cache_from) "
        };
        assert!(err.starts_with(setting), "{value}: {err}");
        assert!(err.contains(why), "{value}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
    let many: Vec<String> = (0..=MAX_EXTRA)
        .map(|i| format!("zot.example/c{i}"))
        .collect();
    assert!(
        exports(&many)
            .unwrap_err()
            .contains("at most 8 extra caches")
    );
    let long = format!("zot.example/{}", "a/".repeat(400));
    let err = imports(&[long]).unwrap_err();
    assert!(err.contains('…') && err.len() < 400, "{err}");
}

#[test]
fn exports_stay_in_the_build_registry_and_off_its_images_and_history() {
    assert!(settled(&["zot.example:5000/cache/org/app:main"], &[]).is_ok());
    assert!(
        settled(&["zot.example:5000/org/app:buildcache"], &[]).is_ok(),
        "a tag of the image's own repository that is not one of its tags"
    );
    for (to, why) in [
        (
            "other.example/cache/app",
            "not in the build's registry zot.example:5000",
        ),
        ("zot.example/cache/app", "not in the build's registry"),
        ("ZOT.example:5000/cache/app", "not in the build's registry"),
        (
            "zot.example:5000/org/app",
            "would overwrite the image zot.example:5000/org/app:latest",
        ),
        ("zot.example:5000/org/app:1.2", "would overwrite the image"),
        (
            "zot.example:5000/cache/buildkit-launcher/history/x",
            "inside the history namespace",
        ),
        (
            "zot.example:5000/cache/org/app",
            "is the default cache already",
        ),
        (
            "zot.example:5000/cache/org/app:latest",
            "is the default cache already",
        ),
    ] {
        let err = settled(&[to], &[]).unwrap_err();
        assert!(err.starts_with("--cache-to (cache_to) "), "{err}");
        assert!(err.contains(why), "{to}: {err}");
    }
    let err = settled(
        &["zot.example:5000/c/x", "zot.example:5000/c/x:latest"],
        &[],
    )
    .unwrap_err();
    assert!(err.contains("is given twice"), "{err}");
    // With the default cache off, its reference is free for a mode of one's own.
    let mut req = request();
    req.cache = CacheMode::Off;
    req.cache_to = exports(&strings(&[
        "type=registry,ref=zot.example:5000/cache/org/app,mode=min",
    ]))
    .unwrap();
    assert!(settle(&mut req, "h").is_ok());
    // Without a registry nothing can be exported.
    let mut req = request();
    req.registry = None;
    req.cache_to = exports(&strings(&["zot.example:5000/c/x"])).unwrap();
    assert!(
        settle(&mut req, "h")
            .unwrap_err()
            .contains("needs --registry")
    );
}

#[test]
fn imports_from_other_registries_are_anonymous_and_repeats_are_read_once() {
    let req = settled(
        &[],
        &[
            "other.example/pub/cache:main",
            "zot.example:5000/cache/x",
            "zot.example:5000/cache/x:latest",
            "zot.example:5000/cache/org/app",
            "ZOT.example:5000/cache/y",
        ],
    )
    .unwrap();
    let from: Vec<(String, bool)> = req
        .cache_from
        .iter()
        .map(|i| (i.reference.to_string(), i.anonymous))
        .collect();
    assert_eq!(
        from,
        [
            ("other.example/pub/cache:main".to_owned(), true),
            ("zot.example:5000/cache/x".to_owned(), false),
            // another spelling: the runner's credentials are keyed by --registry's
            ("ZOT.example:5000/cache/y".to_owned(), true),
        ]
    );
}

#[test]
fn buildah_takes_one_untagged_repository_each_way() {
    let buildah = |cache: CacheMode, to: &[&str], from: &[&str]| {
        let mut req = request();
        req.backend = Backend::Buildah;
        req.cache = cache;
        req.cache_to = exports(&strings(to)).unwrap();
        req.cache_from = imports(&strings(from)).unwrap();
        settle(&mut req, "h")
    };
    let err = buildah(CacheMode::Off, &["zot.example:5000/c/x:main"], &[]).unwrap_err();
    assert!(
        err.contains("buildah takes a cache repository without a tag"),
        "{err}"
    );
    let err = buildah(CacheMode::Max, &["zot.example:5000/c/x"], &[]).unwrap_err();
    assert!(err.contains("one cache repository each way"), "{err}");
    assert!(err.contains("--cache off"), "{err}");
    assert!(
        buildah(
            CacheMode::Off,
            &["zot.example:5000/c/x"],
            &["zot.example:5000/c/y"]
        )
        .is_ok()
    );
    // The default cache read again as an extra is the same repository, read once.
    assert!(buildah(CacheMode::Max, &[], &["zot.example:5000/cache/org/app"]).is_ok());
    let err = buildah(
        CacheMode::Off,
        &[],
        &["zot.example:5000/c/x", "o.example/y"],
    )
    .unwrap_err();
    assert!(
        err.starts_with("--cache-from (cache_from): the buildah backend"),
        "{err}"
    );
}

#[test]
fn the_plan_line_says_what_is_written_and_what_is_read_anonymously() {
    let req = settled(&["zot.example:5000/c/x:main"], &["other.example/y"]).unwrap();
    let extra = ExtraCaches::of(&req);
    assert_eq!(
        extra.describe(false).unwrap(),
        "also exported to zot.example:5000/c/x:main (mode max); also imported from other.example/y (anonymous)"
    );
    assert!(
        extra
            .describe(true)
            .unwrap()
            .contains("(not written: dry run)")
    );
    assert_eq!(ExtraCaches::default().describe(false), None);
    let json = serde_json::to_value(&extra).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "to": [{"ref": "zot.example:5000/c/x:main", "mode": "max"}],
            "from": [{"ref": "other.example/y", "anonymous": true}],
        })
    );
}
