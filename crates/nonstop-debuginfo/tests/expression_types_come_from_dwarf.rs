//! Rule expressions are checked against the real DWARF types of the variables in scope:
//! `DebugInfo::expr_scope` gives exact `Ty`s for Rust and C locals (debug and optimised
//! builds), so typos and type mismatches are refused when a rule is armed, with messages
//! naming what exists, and valid expressions pass.

mod common;

use common::Fixture;
use nonstop_debuginfo::DebugInfo;
use nonstop_expr::{Expr, Template, Ty};

/// The scope at the first site of a mark.
fn scope(f: &Fixture, mark: &str) -> Vec<(String, Ty)> {
    let info = DebugInfo::load(&f.binary).unwrap();
    let sites = info.resolve(&f.at(mark)).unwrap();
    let vars = info.variables_at(sites[0].address).unwrap();
    info.expr_scope(&vars)
}

fn var(scope: &[(String, Ty)], name: &str) -> Ty {
    scope
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no variable {name} in {scope:?}"))
        .1
        .clone()
}

fn st(name: &str, fields: &[(&str, Ty)]) -> Ty {
    Ty::Struct {
        name: name.into(),
        fields: fields
            .iter()
            .map(|(n, t)| ((*n).to_owned(), t.clone()))
            .collect(),
    }
}

fn en(name: &str, variants: &[&str]) -> Ty {
    Ty::Enum {
        name: name.into(),
        variants: variants.iter().map(|v| (*v).to_owned()).collect(),
    }
}

fn list(t: Ty) -> Ty {
    Ty::List(Box::new(t))
}

fn opt(t: Ty) -> Ty {
    Ty::Option(Box::new(t))
}

/// `typed::Node { value, next: Option<Box<Node>> }` mapped `levels` deep, then unknown.
fn node(levels: u32) -> Ty {
    let next = if levels == 0 {
        Ty::Unknown
    } else {
        node(levels - 1)
    };
    st("typed::Node", &[("value", Ty::Int), ("next", opt(next))])
}

fn rust_fixtures() -> [&'static Fixture; 2] {
    [common::typed_debug(), common::typed_release()]
}

fn c_fixtures() -> [&'static Fixture; 2] {
    [common::typed_c_o0(), common::typed_c_o2()]
}

#[test]
fn rust_locals_have_their_exact_types() {
    let kind = en("typed::Kind", &["Credit", "Debit"]);
    for f in rust_fixtures() {
        let s = scope(f, "process");
        let at = f.binary.display();
        assert_eq!(
            var(&s, "order"),
            st(
                "typed::Order",
                &[
                    ("id", Ty::Uint),
                    ("total", Ty::Int),
                    ("customer", Ty::Str),
                    (
                        "items",
                        list(st("typed::Item", &[("sku", Ty::Str), ("qty", Ty::Uint)]))
                    ),
                    ("note", opt(Ty::Str)),
                    ("kind", kind.clone()),
                    ("tags", Ty::Map(Box::new(Ty::Uint))),
                ]
            ),
            "{at}"
        );
        assert_eq!(var(&s, "name"), Ty::Str, "{at}");
        assert_eq!(var(&s, "kind"), kind, "{at}");
        assert_eq!(
            var(&s, "pair"),
            st("(u8, bool)", &[("0", Ty::Uint), ("1", Ty::Bool)]),
            "{at}"
        );
        assert_eq!(var(&s, "scores"), list(Ty::Float), "{at}");
        assert_eq!(var(&s, "coupon"), opt(Ty::Uint), "{at}");
        assert_eq!(
            var(&s, "parsed"),
            en("Result<u16, String>", &["Ok", "Err"]),
            "{at}"
        );
        // A recursive type is mapped a few levels down (a reference, then struct →
        // Option → Box per level), then unknown: anything goes there at arm time.
        assert_eq!(var(&s, "list"), node(3), "{at}");
    }
}

#[test]
fn c_locals_have_their_exact_types() {
    let point = st("point", &[("x", Ty::Int), ("y", Ty::Int), ("z", Ty::Float)]);
    let color = en("color", &["RED", "GREEN", "BLUE"]);
    for f in c_fixtures() {
        let s = scope(f, "process");
        let at = f.binary.display();
        assert_eq!(
            var(&s, "r"),
            st(
                "record",
                &[
                    ("name", Ty::Str),
                    ("scores", list(Ty::Uint)),
                    ("tag", Ty::Str),
                    ("p", point.clone()),
                    ("c", color.clone()),
                    (
                        "n",
                        st(
                            "num",
                            &[("i", Ty::Int), ("f", Ty::Float), ("b", list(Ty::Uint))]
                        )
                    ),
                    // Pointers to data are shown as what they point to; `void *` as an address.
                    ("next", point.clone()),
                    ("opaque", Ty::Uint),
                ]
            ),
            "{at}"
        );
        assert_eq!(var(&s, "label"), Ty::Str, "{at}");
        assert_eq!(var(&s, "c"), color, "{at}");
        // `int grid[2][3]` as a parameter is a pointer to `int[3]`: an address.
        assert_eq!(var(&s, "grid"), Ty::Uint, "{at}");
    }
}

fn condition_error(s: &[(String, Ty)], src: &str) -> String {
    let scope = s.to_vec();
    match Expr::parse(src).unwrap().check_condition(&scope) {
        Ok(()) => panic!("`{src}` was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn rust_mistakes_are_refused_naming_what_exists() {
    for f in rust_fixtures() {
        let s = scope(f, "process");
        let table = [
            (
                "order.totl > 3",
                "`order` has no field `totl`; its fields: id, total, customer, items, note, kind, tags",
            ),
            (
                "name > 3",
                "cannot compare a string with a number: name > 3",
            ),
            (
                "kind == Kind::Nope",
                "`typed::Kind` has no variant `Nope`; its variants: Credit, Debit",
            ),
            (
                "order.items[0].skew == \"A-1\"",
                "`order.items[0]` has no field `skew`; its fields: sku, qty",
            ),
            (
                "order.note.is_ok()",
                "`is_ok` needs a Result, but `order.note` is an Option",
            ),
            (
                "parsed == Some",
                "`Result<u16, String>` has no variant `Some`; its variants: Ok, Err",
            ),
            (
                "scores > 1",
                "cannot compare a list with a number: scores > 1",
            ),
            (
                "pair.1 + 1 > 2",
                "cannot apply `+` to a bool and a number: pair.1 + 1",
            ),
        ];
        for (src, want) in table {
            assert_eq!(
                condition_error(&s, src),
                want,
                "{src} in {}",
                f.binary.display()
            );
        }
        let bad = Expr::parse("order.customer").unwrap();
        assert_eq!(
            bad.check_number(&s).unwrap_err().to_string(),
            "a metric value must be a number, but `order.customer` is a string"
        );
        let tpl = Template::parse("paid {order.totl}").unwrap();
        assert_eq!(
            tpl.check(&s).unwrap_err().to_string(),
            "`order` has no field `totl`; its fields: id, total, customer, items, note, kind, tags"
        );
    }
}

#[test]
fn c_mistakes_are_refused_naming_what_exists() {
    for f in c_fixtures() {
        let s = scope(f, "process");
        let table = [
            (
                "r.nmae == \"alice\"",
                "`r` has no field `nmae`; its fields: name, scores, tag, p, c, n, next, opaque",
            ),
            (
                "c == PURPLE",
                "`color` has no variant `PURPLE`; its variants: RED, GREEN, BLUE",
            ),
            (
                "label > 3",
                "cannot compare a string with a number: label > 3",
            ),
            ("r.p.w > 0", "`r.p` has no field `w`; its fields: x, y, z"),
        ];
        for (src, want) in table {
            assert_eq!(
                condition_error(&s, src),
                want,
                "{src} in {}",
                f.binary.display()
            );
        }
    }
}

#[test]
fn valid_expressions_over_real_types_check() {
    let rust = [
        "order.total > 10000 && name == \"ann\"",
        "order.id % 2 == 1",
        "order.items[0].sku.starts_with(\"A\") && order.items[0].qty >= 2",
        "order.items.len() > 0",
        "order.note.is_none() || order.note.0.contains(\"x\")",
        "order.note == None",
        "kind == Kind::Credit || matches(order.kind, Debit)",
        "pair.0 > 1 && pair.1",
        "order.tags[\"vip\"] > 0 && order.tags.contains(\"vip\")",
        "scores[1] > 2.0 && scores.contains(1.5)",
        "coupon.is_some() && coupon.0 == 4",
        "parsed.is_ok() || parsed == Err",
        "list.next.0.value == 2 && list.next.0.next.0.next.0.next.0.anything",
        "*order.total - 1 > 0",
    ];
    for f in rust_fixtures() {
        let s = scope(f, "process");
        for src in rust {
            let e = Expr::parse(src).unwrap();
            assert_eq!(
                e.check_condition(&s),
                Ok(()),
                "{src} in {}",
                f.binary.display()
            );
        }
        let e = Expr::parse("order.total / 100").unwrap();
        assert_eq!(e.check_number(&s), Ok(()));
        let t = Template::parse("order {order.id} for {name}: {order.items:?} {kind:?}").unwrap();
        assert_eq!(t.check(&s), Ok(()));
    }
    let c = [
        "r.name == \"alice\" && r.tag.starts_with(\"t\")",
        "r.scores[1] == 2 && r.scores.len() == 3",
        "r.c == GREEN && c == BLUE",
        "r.p.z < 4.0 && r.next.x == 7",
        "r.n.b[0] == 1 || r.n.i > 0",
        "r.opaque == 0 && grid != 0",
        "label.len() == 5",
    ];
    for f in c_fixtures() {
        let s = scope(f, "process");
        for src in c {
            let e = Expr::parse(src).unwrap();
            assert_eq!(
                e.check_condition(&s),
                Ok(()),
                "{src} in {}",
                f.binary.display()
            );
        }
    }
}

#[test]
fn any_die_offset_maps_without_panicking() {
    // Offsets that are not type DIEs (mid-entry, other tags, past the end) must give a
    // type or `Unknown`, quickly: the agent maps whatever the scope's DIEs say.
    let info = DebugInfo::load(&common::typed_debug().binary).unwrap();
    let start = std::time::Instant::now();
    let mut known = 0;
    for off in (0..400_000usize).step_by(97) {
        if info.expr_ty_of(nonstop_debuginfo::DieRef(off)) != Ty::Unknown {
            known += 1;
        }
    }
    assert!(known > 0, "no offset mapped to a type");
    assert!(start.elapsed().as_secs() < 60, "took {:?}", start.elapsed());
}
