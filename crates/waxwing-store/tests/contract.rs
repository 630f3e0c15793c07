//! One contract per store trait, run against every backend: the in-memory
//! stores, an SQLite file, SQLite in memory, and PostgreSQL (a real server,
//! one per test process, a fresh database per test: `waxwing-testsvc`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use waxwing_proto::jid::{BareJid, Jid};
use waxwing_store::{
    Affiliation, LastActivity, OfflineMessage, RoomAffiliation, RoomRecord, RosterItem, StoreError,
    StoredRoom, StoredSecret, Stores, Subscription, memory, open,
};
use waxwing_testsvc::postgres::Cluster;

fn j(s: &str) -> BareJid {
    BareJid::parse(s).unwrap()
}

fn secret(mechanism: &str, seed: u8) -> StoredSecret {
    StoredSecret {
        mechanism: mechanism.into(),
        salt: vec![seed; 16],
        iterations: 4096 + u32::from(seed),
        stored_key: vec![seed.wrapping_add(1); 32],
        server_key: vec![seed.wrapping_add(2); 32],
    }
}

/// A fresh database on this process's PostgreSQL (started on first use).
async fn postgres_url() -> String {
    let cluster = tokio::task::spawn_blocking(Cluster::shared).await.unwrap();
    cluster.database().await
}

fn sqlite_url(dir: &Path) -> String {
    // A parent directory that does not exist yet: open() must create it.
    format!("sqlite://{}", dir.join("nested/dir/waxwing.db").display())
}

// ---------------------------------------------------------------- accounts

async fn accounts_contract(s: &Stores) {
    let a = &s.accounts;
    let romeo = j("romeo@montague.example");
    let juliet = j("juliet@capulet.example");
    let tybalt = j("tybalt@capulet.example");

    assert_eq!(a.exists(&romeo).await, Ok(false));
    assert_eq!(a.secrets(&romeo).await, Ok(None));
    assert_eq!(a.count(None).await, Ok(0));
    assert_eq!(a.list(None).await, Ok(vec![]));

    let both = [secret("SCRAM-SHA-256", 1), secret("SCRAM-SHA-1", 2)];
    a.create(&romeo, &both).await.unwrap();
    assert_eq!(a.create(&romeo, &[]).await, Err(StoreError::AlreadyExists));
    assert_eq!(a.exists(&romeo).await, Ok(true));
    // Sorted by mechanism, whatever the input order.
    assert_eq!(
        a.secrets(&romeo).await,
        Ok(Some(vec![
            secret("SCRAM-SHA-1", 2),
            secret("SCRAM-SHA-256", 1)
        ]))
    );
    // The failed create did not touch the existing secrets.
    assert_eq!(a.secrets(&romeo).await.unwrap().unwrap().len(), 2);

    // An account without secrets (e.g. certificate-only) exists, with an empty list.
    a.create(&tybalt, &[]).await.unwrap();
    assert_eq!(a.secrets(&tybalt).await, Ok(Some(vec![])));
    a.create(&juliet, &[secret("SCRAM-SHA-1", 3)])
        .await
        .unwrap();

    // set_secrets replaces the whole set; repeated mechanisms: last wins.
    a.set_secrets(
        &romeo,
        &[secret("SCRAM-SHA-256", 7), secret("SCRAM-SHA-256", 8)],
    )
    .await
    .unwrap();
    assert_eq!(
        a.secrets(&romeo).await,
        Ok(Some(vec![secret("SCRAM-SHA-256", 8)]))
    );
    assert_eq!(
        a.set_secrets(&j("nobody@montague.example"), &both).await,
        Err(StoreError::NotFound)
    );

    // Listing and counting, sorted by BareJid, filtered by domain.
    assert_eq!(
        a.list(None).await,
        Ok(vec![juliet.clone(), romeo.clone(), tybalt.clone()])
    );
    assert_eq!(
        a.list(Some("capulet.example")).await,
        Ok(vec![juliet.clone(), tybalt.clone()])
    );
    assert_eq!(a.list(Some("nowhere.example")).await, Ok(vec![]));
    assert_eq!(a.count(None).await, Ok(3));
    assert_eq!(a.count(Some("capulet.example")).await, Ok(2));
    assert_eq!(a.count(Some("montague.example")).await, Ok(1));

    // Delete.
    a.delete(&tybalt).await.unwrap();
    assert_eq!(a.delete(&tybalt).await, Err(StoreError::NotFound));
    assert_eq!(a.exists(&tybalt).await, Ok(false));
    assert_eq!(a.secrets(&tybalt).await, Ok(None));
    assert_eq!(a.count(Some("capulet.example")).await, Ok(1));
    // Recreated from scratch: no secrets left over.
    a.create(&tybalt, &[]).await.unwrap();
    assert_eq!(a.secrets(&tybalt).await, Ok(Some(vec![])));

    cascade_delete(s).await;
}

/// Deleting an account removes its roster and offline messages, keeps other
/// users' rows that name it, and never lets its roster version go back.
async fn cascade_delete(s: &Stores) {
    let mercutio = j("mercutio@verona.example");
    let benvolio = j("benvolio@verona.example");
    s.accounts
        .create(&mercutio, &[secret("SCRAM-SHA-1", 9)])
        .await
        .unwrap();
    s.accounts.create(&benvolio, &[]).await.unwrap();

    s.roster
        .put(&mercutio, &RosterItem::new(benvolio.clone()))
        .await
        .unwrap();
    let v = s
        .roster
        .put(&mercutio, &RosterItem::new(j("romeo@montague.example")))
        .await
        .unwrap();
    s.roster
        .put(&benvolio, &RosterItem::new(mercutio.clone()))
        .await
        .unwrap();
    assert!(s.offline.push(&mercutio, "<message/>", 10).await.unwrap());
    assert!(s.offline.push(&benvolio, "<message/>", 10).await.unwrap());

    s.accounts.delete(&mercutio).await.unwrap();
    assert_eq!(s.roster.items(&mercutio).await, Ok(vec![]));
    assert_eq!(s.offline.count(&mercutio).await, Ok(0));
    assert!(s.roster.version(&mercutio).await.unwrap() > v);
    // Benvolio's data is untouched, including his row for Mercutio.
    assert_eq!(s.offline.count(&benvolio).await, Ok(1));
    let owners = s.roster.owners_of(&mercutio).await.unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].0, benvolio);

    // A recreated account starts with an empty roster and a version no
    // client can have cached.
    s.accounts.create(&mercutio, &[]).await.unwrap();
    assert_eq!(s.roster.items(&mercutio).await, Ok(vec![]));
    assert!(s.roster.version(&mercutio).await.unwrap() > v);

    // An address that can never come back (an anonymous guest's) may
    // forget its version too; others' versions are untouched.
    let benvolio_v = s.roster.version(&benvolio).await.unwrap();
    s.accounts.delete(&mercutio).await.unwrap();
    s.roster.forget_version(&mercutio).await.unwrap();
    assert_eq!(s.roster.version(&mercutio).await, Ok(0));
    assert_eq!(s.roster.version(&benvolio).await, Ok(benvolio_v));
}

// ------------------------------------------------------------------ roster

async fn roster_contract(s: &Stores) {
    let r = &s.roster;
    let romeo = j("romeo@montague.example");
    let juliet = j("juliet@capulet.example");
    let nurse = j("nurse@capulet.example");
    let benvolio = j("benvolio@montague.example");

    assert_eq!(r.version(&romeo).await, Ok(0));
    assert_eq!(r.items(&romeo).await, Ok(vec![]));
    assert_eq!(r.get(&romeo, &juliet).await, Ok(None));
    assert_eq!(r.remove(&romeo, &juliet).await, Ok(0));

    // An invisible row (pending-in only) does not bump the version.
    let mut pending = RosterItem::new(juliet.clone());
    pending.in_roster = false;
    pending.pending_in = true;
    pending.pending_in_stanza = Some("<presence type='subscribe'/>".into());
    assert_eq!(r.put(&romeo, &pending).await, Ok(0));
    assert_eq!(r.get(&romeo, &juliet).await, Ok(Some(pending.clone())));
    // Changing invisible fields of an invisible row: still no bump.
    pending.approved = true;
    pending.name = Some("hidden name".into());
    assert_eq!(r.put(&romeo, &pending).await, Ok(0));

    // Becoming visible bumps.
    let mut item = pending.clone();
    item.in_roster = true;
    item.name = Some("Juliet".into());
    item.groups = vec!["Lovers".into(), "Capulets".into(), "Lovers".into()];
    item.subscription = Subscription::To;
    let v1 = r.put(&romeo, &item).await.unwrap();
    assert_eq!(v1, 1);
    let stored = r.get(&romeo, &juliet).await.unwrap().unwrap();
    // Groups keep their order, without the repeat.
    assert_eq!(
        stored.groups,
        vec!["Lovers".to_string(), "Capulets".to_string()]
    );
    assert_eq!(stored.subscription, Subscription::To);
    assert_eq!(stored.pending_in_stanza, item.pending_in_stanza);
    assert!(stored.approved && stored.pending_in && stored.in_roster);

    // Writing the same visible state again: no bump.
    assert_eq!(r.put(&romeo, &stored).await, Ok(v1));
    // Invisible fields of a visible row: no bump, but stored.
    let mut answered = stored.clone();
    answered.pending_in = false;
    answered.pending_in_stanza = None;
    answered.approved = false;
    assert_eq!(r.put(&romeo, &answered).await, Ok(v1));
    assert_eq!(r.get(&romeo, &juliet).await, Ok(Some(answered.clone())));

    // Each visible field bumps, monotonically.
    let mut last = v1;
    let changes: [fn(&mut RosterItem); 5] = [
        |i| i.name = Some("J.".into()),
        |i| i.name = None,
        |i| i.groups = vec!["Capulets".into(), "Lovers".into()], // order is visible
        |i| i.subscription = Subscription::Both,
        |i| i.ask = true,
    ];
    let mut cur = answered.clone();
    for change in changes {
        change(&mut cur);
        let v = r.put(&romeo, &cur).await.unwrap();
        assert_eq!(v, last + 1);
        last = v;
        assert_eq!(r.get(&romeo, &juliet).await, Ok(Some(cur.clone())));
    }
    cur.groups.clear();
    last = r.put(&romeo, &cur).await.unwrap();
    assert_eq!(
        r.get(&romeo, &juliet).await.unwrap().unwrap().groups,
        Vec::<String>::new()
    );

    // Ceasing to be visible bumps; the row stays for get/items.
    cur.in_roster = false;
    let v = r.put(&romeo, &cur).await.unwrap();
    assert_eq!(v, last + 1);
    last = v;
    assert_eq!(r.items(&romeo).await.unwrap().len(), 1);

    // Ordering: items sorted by contact, whatever the insertion order.
    cur.in_roster = true;
    last = r.put(&romeo, &cur).await.unwrap().max(last);
    for (contact, group) in [(&nurse, "Staff"), (&benvolio, "Cousins")] {
        let mut i = RosterItem::new(contact.clone());
        i.groups = vec![group.into()];
        let v = r.put(&romeo, &i).await.unwrap();
        assert!(v > last);
        last = v;
    }
    let items = r.items(&romeo).await.unwrap();
    let mut contacts: Vec<BareJid> = items.iter().map(|i| i.contact.clone()).collect();
    let mut sorted = contacts.clone();
    sorted.sort();
    assert_eq!(contacts, sorted);
    contacts.sort();
    assert_eq!(
        contacts,
        vec![benvolio.clone(), juliet.clone(), nurse.clone()]
    );
    // Groups belong to the right rows.
    for i in &items {
        let want: Vec<String> = if i.contact == nurse {
            vec!["Staff".into()]
        } else if i.contact == benvolio {
            vec!["Cousins".into()]
        } else {
            vec![]
        };
        assert_eq!(i.groups, want, "{}", i.contact);
    }
    assert_eq!(r.version(&romeo).await, Ok(last));

    // Remove: a visible row bumps, a missing row does not.
    let v = r.remove(&romeo, &nurse).await.unwrap();
    assert_eq!(v, last + 1);
    assert_eq!(r.get(&romeo, &nurse).await, Ok(None));
    assert_eq!(r.remove(&romeo, &nurse).await, Ok(v));
    // Re-adding a removed contact starts with no stale groups.
    let v = r
        .put(&romeo, &RosterItem::new(nurse.clone()))
        .await
        .unwrap();
    assert_eq!(
        r.get(&romeo, &nurse).await.unwrap().unwrap().groups,
        Vec::<String>::new()
    );
    // An invisible row's removal does not bump.
    let mut hidden = RosterItem::new(j("paris@verona.example"));
    hidden.in_roster = false;
    assert_eq!(r.put(&romeo, &hidden).await, Ok(v));
    assert_eq!(r.remove(&romeo, &hidden.contact).await, Ok(v));
    assert_eq!(r.version(&romeo).await, Ok(v));

    // Rosters are per owner; versions too.
    assert_eq!(r.version(&juliet).await, Ok(0));
    let mut back = RosterItem::new(romeo.clone());
    back.subscription = Subscription::From;
    back.groups = vec!["Montagues".into()];
    assert_eq!(r.put(&juliet, &back).await, Ok(1));
    assert_eq!(r.version(&romeo).await, Ok(v));
    assert_eq!(r.items(&juliet).await, Ok(vec![back.clone()]));

    // owners_of: every row naming the contact, with its owner, sorted by owner.
    let mut from_nurse = RosterItem::new(romeo.clone());
    from_nurse.in_roster = false;
    from_nurse.pending_in = true;
    r.put(&nurse, &from_nurse).await.unwrap();
    let owners = r.owners_of(&romeo).await.unwrap();
    assert_eq!(
        owners,
        vec![(juliet.clone(), back), (nurse.clone(), from_nurse)]
    );
    assert_eq!(r.owners_of(&j("nobody@verona.example")).await, Ok(vec![]));

    concurrent_puts_each_get_a_version(s).await;
}

/// Concurrent visible changes to one roster each get their own version: no
/// bump is lost and none is handed out twice.
async fn concurrent_puts_each_get_a_version(s: &Stores) {
    let owner = j("capulet@capulet.example");
    let start = s.roster.version(&owner).await.unwrap();
    let mut tasks = Vec::new();
    for n in 0..20 {
        let roster = Arc::clone(&s.roster);
        let owner = owner.clone();
        tasks.push(tokio::spawn(async move {
            let mut item = RosterItem::new(j(&format!("guest{n}@verona.example")));
            item.groups = vec![format!("table {}", n % 3)];
            roster.put(&owner, &item).await.unwrap()
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (start + 1..=start + 20).collect::<Vec<_>>());
    assert_eq!(s.roster.version(&owner).await, Ok(start + 20));
    assert_eq!(s.roster.items(&owner).await.unwrap().len(), 20);
}

// ----------------------------------------------------------------- offline

async fn offline_contract(s: &Stores) {
    let o = &s.offline;
    let romeo = j("romeo@montague.example");
    let juliet = j("juliet@capulet.example");

    assert_eq!(o.count(&romeo).await, Ok(0));
    assert_eq!(o.list(&romeo).await, Ok(vec![]));
    assert_eq!(o.owners().await, Ok(vec![]));
    assert_eq!(o.remove_up_to(&romeo, i64::MAX).await, Ok(0));
    assert_eq!(
        o.push(&romeo, "<message>zero</message>", 0).await,
        Ok(false)
    );

    for n in 0..3 {
        assert_eq!(
            o.push(&romeo, &format!("<message>{n}</message>"), 3).await,
            Ok(true)
        );
        assert!(o.push(&juliet, "<message>j</message>", 100).await.unwrap());
    }
    // Quota reached: refused, nothing stored.
    assert_eq!(
        o.push(&romeo, "<message>over</message>", 3).await,
        Ok(false)
    );
    assert_eq!(o.count(&romeo).await, Ok(3));
    // A bigger quota lets it in.
    assert_eq!(o.push(&romeo, "<message>3</message>", 4).await, Ok(true));

    // Oldest first, ids increasing.
    let list = o.list(&romeo).await.unwrap();
    let bodies: Vec<&str> = list.iter().map(|m| m.stanza.as_str()).collect();
    assert_eq!(
        bodies,
        [
            "<message>0</message>",
            "<message>1</message>",
            "<message>2</message>",
            "<message>3</message>"
        ]
    );
    assert!(list.windows(2).all(|w| w[0].id < w[1].id));
    // Pages: after an id, at most `limit`, in order.
    assert_eq!(o.list_page(&romeo, 0, 2).await, Ok(list[..2].to_vec()));
    assert_eq!(
        o.list_page(&romeo, list[1].id, 10).await,
        Ok(list[2..].to_vec())
    );
    assert_eq!(o.list_page(&romeo, list[3].id, 10).await, Ok(vec![]));

    // remove_up_to deletes exactly the delivered prefix.
    assert_eq!(o.remove_up_to(&romeo, list[1].id).await, Ok(2));
    assert_eq!(o.list(&romeo).await, Ok(list[2..].to_vec()));
    assert_eq!(o.remove_up_to(&romeo, list[1].id).await, Ok(0));
    // Other owners are untouched.
    assert_eq!(o.count(&juliet).await, Ok(3));
    let mut owners = o.owners().await.unwrap();
    owners.sort();
    assert_eq!(owners, vec![juliet.clone(), romeo.clone()]);

    // Ids are never reused, even after everything was removed.
    let max = list.last().unwrap().id;
    assert_eq!(o.remove_up_to(&romeo, max).await, Ok(2));
    assert_eq!(o.count(&romeo).await, Ok(0));
    assert_eq!(o.owners().await, Ok(vec![juliet.clone()]));
    assert!(
        o.push(&romeo, "<message>later</message>", 10)
            .await
            .unwrap()
    );
    let later: Vec<OfflineMessage> = o.list(&romeo).await.unwrap();
    assert_eq!(later.len(), 1);
    assert!(later[0].id > max);

    // Stanza text round-trips byte for byte.
    let tricky = "<message xml:lang='en'><body>ünïcødé 🌹 &amp; \"quotes\" \n\t</body></message>";
    assert!(o.push(&juliet, tricky, 100).await.unwrap());
    assert_eq!(
        o.list(&juliet).await.unwrap().last().unwrap().stanza,
        tricky
    );

    quota_is_atomic(s).await;
}

/// 50 concurrent pushes against a quota of 10 store exactly 10.
async fn quota_is_atomic(s: &Stores) {
    let owner = j("rosaline@capulet.example");
    let mut tasks = Vec::new();
    for n in 0..50 {
        let offline = Arc::clone(&s.offline);
        let owner = owner.clone();
        tasks.push(tokio::spawn(async move {
            offline
                .push(&owner, &format!("<message>{n}</message>"), 10)
                .await
                .unwrap()
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        if t.await.unwrap() {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 10);
    assert_eq!(s.offline.count(&owner).await, Ok(10));
    assert_eq!(s.offline.list(&owner).await.unwrap().len(), 10);
}

// ---------------------------------------------------------------- muc

fn aff(jid: &str, affiliation: Affiliation, nick: Option<&str>) -> RoomAffiliation {
    RoomAffiliation {
        jid: j(jid),
        affiliation,
        nick: nick.map(Into::into),
        reason: None,
    }
}

fn room_record(jid: &str, config: &str) -> RoomRecord {
    RoomRecord {
        jid: j(jid),
        config: config.into(),
        subject: String::new(),
        subject_by: None,
    }
}

async fn muc_contract(s: &Stores) {
    let m = &s.muc;
    let coven = j("coven@chat.shakespeare.lit");
    let hag = j("hag66@shakespeare.lit");
    assert_eq!(m.rooms("chat.shakespeare.lit").await, Ok(vec![]));
    assert_eq!(m.delete_room(&coven).await, Err(StoreError::NotFound));
    assert_eq!(
        m.save_room(&room_record("coven@chat.shakespeare.lit", "c"))
            .await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        m.set_affiliation(
            &coven,
            &aff("hag66@shakespeare.lit", Affiliation::Member, None)
        )
        .await,
        Err(StoreError::NotFound)
    );

    let mut room = StoredRoom {
        room: room_record("coven@chat.shakespeare.lit", "<x/>"),
        affiliations: vec![
            aff("crone1@shakespeare.lit", Affiliation::Owner, Some("crone")),
            aff(
                "hag66@shakespeare.lit",
                Affiliation::Member,
                Some("thirdwitch"),
            ),
        ],
    };
    m.replace_room(&room).await.unwrap();
    // Another service's room is not listed for this one.
    m.replace_room(&StoredRoom {
        room: room_record("other@muc.example", "<y/>"),
        affiliations: vec![],
    })
    .await
    .unwrap();
    assert_eq!(
        m.rooms("chat.shakespeare.lit").await,
        Ok(vec![room.clone()])
    );

    // Config and subject change; affiliations stay.
    room.room.config = "<x v='2'/>".into();
    room.room.subject = "Fire Burn and Cauldron Bubble!".into();
    room.room.subject_by = Some("thirdwitch".into());
    m.save_room(&room.room).await.unwrap();
    assert_eq!(
        m.rooms("chat.shakespeare.lit").await,
        Ok(vec![room.clone()])
    );

    // set_affiliation replaces; results stay sorted by JID.
    let mut banned = aff("wiccarocks@shakespeare.lit", Affiliation::Outcast, None);
    banned.reason = Some("Treason".into());
    m.set_affiliation(&coven, &banned).await.unwrap();
    m.set_affiliation(
        &coven,
        &aff(
            "hag66@shakespeare.lit",
            Affiliation::Admin,
            Some("thirdwitch"),
        ),
    )
    .await
    .unwrap();
    let got = m.rooms("chat.shakespeare.lit").await.unwrap();
    let list: Vec<_> = got[0]
        .affiliations
        .iter()
        .map(|a| (a.jid.to_string(), a.affiliation))
        .collect();
    assert_eq!(
        list,
        vec![
            ("crone1@shakespeare.lit".to_string(), Affiliation::Owner),
            ("hag66@shakespeare.lit".to_string(), Affiliation::Admin),
            (
                "wiccarocks@shakespeare.lit".to_string(),
                Affiliation::Outcast
            ),
        ]
    );
    assert_eq!(got[0].affiliations[2].reason.as_deref(), Some("Treason"));

    // A registered nick belongs to one JID.
    assert_eq!(
        m.set_affiliation(
            &coven,
            &aff("x@shakespeare.lit", Affiliation::Member, Some("crone"))
        )
        .await,
        Err(StoreError::AlreadyExists)
    );

    m.remove_affiliation(&coven, &hag).await.unwrap();
    m.remove_affiliation(&coven, &hag).await.unwrap();
    assert_eq!(
        m.rooms("chat.shakespeare.lit").await.unwrap()[0]
            .affiliations
            .len(),
        2
    );

    // replace_room replaces the whole affiliation list.
    room.affiliations = vec![aff("crone1@shakespeare.lit", Affiliation::Owner, None)];
    m.replace_room(&room).await.unwrap();
    assert_eq!(
        m.rooms("chat.shakespeare.lit").await,
        Ok(vec![room.clone()])
    );

    m.delete_room(&coven).await.unwrap();
    assert_eq!(m.rooms("chat.shakespeare.lit").await, Ok(vec![]));
    assert_eq!(m.rooms("muc.example").await.unwrap().len(), 1);
    // A re-created room starts without the old affiliations.
    m.replace_room(&StoredRoom {
        room: room_record("coven@chat.shakespeare.lit", "<x/>"),
        affiliations: vec![],
    })
    .await
    .unwrap();
    assert_eq!(
        m.rooms("chat.shakespeare.lit").await.unwrap()[0].affiliations,
        vec![]
    );
}

// ------------------------------------------------------- blocklist (0191)

async fn blocklist_contract(s: &Stores) {
    let b = &s.blocklist;
    let romeo = j("romeo@montague.example");
    let juliet = j("juliet@capulet.example");
    let jid = |x: &str| Jid::parse(x).unwrap();
    assert_eq!(b.list(&romeo).await, Ok(vec![]));
    b.block(
        &romeo,
        &[
            jid("tybalt@capulet.example"),
            jid("evil.example"),
            jid("a@b.example/phone"),
        ],
    )
    .await
    .unwrap();
    // Blocking twice keeps one row; other owners are separate.
    b.block(&romeo, &[jid("evil.example")]).await.unwrap();
    b.block(&juliet, &[jid("nurse@capulet.example")])
        .await
        .unwrap();
    assert_eq!(
        b.list(&romeo).await,
        Ok(vec![
            jid("a@b.example/phone"),
            jid("evil.example"),
            jid("tybalt@capulet.example")
        ])
    );
    b.unblock(&romeo, &[jid("evil.example"), jid("never@blocked.example")])
        .await
        .unwrap();
    assert_eq!(b.list(&romeo).await.unwrap().len(), 2);
    assert_eq!(
        b.unblock_all(&romeo).await,
        Ok(vec![
            jid("a@b.example/phone"),
            jid("tybalt@capulet.example")
        ])
    );
    assert_eq!(b.list(&romeo).await, Ok(vec![]));
    assert_eq!(b.unblock_all(&romeo).await, Ok(vec![]));
    b.remove_user(&juliet).await.unwrap();
    assert_eq!(b.list(&juliet).await, Ok(vec![]));
}

// ---------------------------------------------- private XML / vCard (0049)

async fn private_xml_contract(s: &Stores) {
    let p = &s.private_xml;
    let romeo = j("romeo@montague.example");
    let juliet = j("juliet@capulet.example");
    assert_eq!(p.get(&romeo, "vcard-temp").await, Ok(None));
    p.set(&romeo, "vcard-temp", "<vCard xmlns='vcard-temp'/>")
        .await
        .unwrap();
    p.set(&romeo, "{storage:bookmarks}storage", "<storage/>")
        .await
        .unwrap();
    p.set(
        &romeo,
        "vcard-temp",
        "<vCard xmlns='vcard-temp'><FN>R</FN></vCard>",
    )
    .await
    .unwrap();
    p.set(&juliet, "vcard-temp", "<vCard xmlns='vcard-temp'/>")
        .await
        .unwrap();
    assert_eq!(
        p.get(&romeo, "vcard-temp").await,
        Ok(Some("<vCard xmlns='vcard-temp'><FN>R</FN></vCard>".into()))
    );
    assert_eq!(
        p.get(&romeo, "{storage:bookmarks}storage").await,
        Ok(Some("<storage/>".into()))
    );
    assert_eq!(
        p.keys(&romeo).await.unwrap(),
        ["vcard-temp", "{storage:bookmarks}storage"]
    );
    p.remove_user(&romeo).await.unwrap();
    assert_eq!(p.keys(&romeo).await, Ok(vec![]));
    assert_eq!(p.get(&romeo, "vcard-temp").await, Ok(None));
    assert_eq!(p.get(&romeo, "{storage:bookmarks}storage").await, Ok(None));
    assert!(p.get(&juliet, "vcard-temp").await.unwrap().is_some());
}

// ------------------------------------------------ last activity (0012)

async fn last_activity_contract(s: &Stores) {
    let l = &s.last_activity;
    let romeo = j("romeo@montague.example");
    assert_eq!(l.get(&romeo).await, Ok(None));
    let first = LastActivity {
        at: 1_795_000_000,
        status: "Heading Home".into(),
    };
    l.set(&romeo, &first).await.unwrap();
    assert_eq!(l.get(&romeo).await, Ok(Some(first)));
    let second = LastActivity {
        at: 1_795_000_100,
        status: String::new(),
    };
    l.set(&romeo, &second).await.unwrap();
    assert_eq!(l.get(&romeo).await, Ok(Some(second)));
    l.remove_user(&romeo).await.unwrap();
    assert_eq!(l.get(&romeo).await, Ok(None));

    // A batch: one account twice (the later entry wins), another once, and
    // more rows than one statement takes.
    let juliet = j("juliet@capulet.example");
    let at = |n: u64, status: &str| LastActivity {
        at: 1_795_000_000 + n,
        status: status.into(),
    };
    let mut batch = vec![
        (romeo.clone(), at(1, "first")),
        (juliet.clone(), at(2, "")),
        (romeo.clone(), at(3, "second")),
    ];
    batch.extend((0..1500).map(|i| (j(&format!("u{i}@montague.example")), at(i, "bulk"))));
    l.set_many(&batch).await.unwrap();
    assert_eq!(l.get(&romeo).await, Ok(Some(at(3, "second"))));
    assert_eq!(l.get(&juliet).await, Ok(Some(at(2, ""))));
    assert_eq!(
        l.get(&j("u1499@montague.example")).await,
        Ok(Some(at(1499, "bulk")))
    );
    l.set_many(&[]).await.unwrap();
}

// ---------------------------------------------------------------- archive

use waxwing_store::archive::{
    ArchiveOwner, ArchivePrefs, ArchiveQuery, DefaultPolicy, Item, NewItem, OwnerKind, Page,
};

fn jid(s: &str) -> Jid {
    Jid::parse(s).unwrap()
}

/// `n` seconds after a fixed instant, with a millisecond part to check precision.
fn at(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_123 + n * 1000)
}

fn ids_of(page: &Page<Item>) -> Vec<String> {
    page.items.iter().map(|i| i.id.clone()).collect()
}

fn q(max: usize) -> ArchiveQuery {
    ArchiveQuery {
        max,
        ..ArchiveQuery::default()
    }
}

async fn archive_contract(s: &Stores) {
    let a = &s.archive;
    let romeo = ArchiveOwner::User(j("romeo@montague.example"));
    let juliet = ArchiveOwner::User(j("juliet@capulet.example"));
    // A room archive at the same address is a different archive.
    let room_romeo = ArchiveOwner::Room(j("romeo@montague.example"));

    let empty = a.query(&romeo, &q(10)).await.unwrap();
    assert_eq!(
        empty,
        Page {
            items: vec![],
            count: 0,
            first_index: None,
            complete: true
        }
    );

    // Ten items, alternating between two resources of Juliet and the Nurse.
    let withs = [
        "juliet@capulet.example/balcony",
        "juliet@capulet.example/chamber",
        "nurse@capulet.example",
    ];
    let mut ids = Vec::new();
    for n in 0..10u64 {
        let with = jid(withs[n as usize % 3]);
        let stanza = format!("<message><body>{n} ünï &amp; 🌹</body></message>");
        let id = a
            .append(
                &romeo,
                NewItem {
                    with: &with,
                    stamp: at(n),
                    stanza: &stanza,
                },
            )
            .await
            .unwrap();
        ids.push(id);
        let other = a
            .append(
                &juliet,
                NewItem {
                    with: &jid("romeo@montague.example/orchard"),
                    stamp: at(n),
                    stanza: "<message/>",
                },
            )
            .await
            .unwrap();
        assert!(!ids.contains(&other));
    }
    let room_id = a
        .append(
            &room_romeo,
            NewItem {
                with: &jid("romeo@montague.example/x"),
                stamp: at(0),
                stanza: "<message type='groupchat'/>",
            },
        )
        .await
        .unwrap();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 10);

    // Everything, in append order, fields round-tripped.
    let all = a.query(&romeo, &q(100)).await.unwrap();
    assert_eq!(ids_of(&all), ids);
    assert_eq!(
        (all.count, all.first_index, all.complete),
        (10, Some(0), true)
    );
    assert_eq!(all.first_id(), Some(ids[0].as_str()));
    assert_eq!(all.last_id(), Some(ids[9].as_str()));
    assert_eq!(all.items[4].stamp, at(4));
    assert_eq!(all.items[4].with, jid("juliet@capulet.example/chamber"));
    assert_eq!(all.items[5].with, jid("nurse@capulet.example"));
    assert_eq!(
        all.items[4].stanza,
        "<message><body>4 ünï &amp; 🌹</body></message>"
    );

    // Forward paging with RSM <after>.
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = Vec::new();
    loop {
        let page = a
            .query(
                &romeo,
                &ArchiveQuery {
                    after: after.clone(),
                    ..q(3)
                },
            )
            .await
            .unwrap();
        assert_eq!(page.count, 10);
        assert_eq!(page.first_index, Some(seen.len() as u64));
        seen.extend(ids_of(&page));
        pages.push(page.complete);
        after = page.last_id().map(str::to_string);
        if page.complete {
            break;
        }
    }
    assert_eq!(seen, ids);
    assert_eq!(pages, [false, false, false, true]);

    // Backward paging from the end with RSM <before/>, then <before>id</before>.
    let last = a
        .query(
            &romeo,
            &ArchiveQuery {
                before: Some(String::new()),
                ..q(3)
            },
        )
        .await
        .unwrap();
    assert_eq!(ids_of(&last), ids[7..]);
    assert_eq!(
        (last.count, last.first_index, last.complete),
        (10, Some(7), false)
    );
    let mut seen = ids_of(&last);
    let mut before = last.first_id().map(str::to_string);
    loop {
        let page = a
            .query(
                &romeo,
                &ArchiveQuery {
                    before: before.clone(),
                    ..q(3)
                },
            )
            .await
            .unwrap();
        let mut ids = ids_of(&page);
        ids.extend(seen);
        seen = ids;
        before = page.first_id().map(str::to_string);
        if page.complete {
            assert_eq!(page.first_index, Some(0));
            break;
        }
    }
    assert_eq!(seen, ids);

    // An exactly full last page is complete.
    let exact = a
        .query(
            &romeo,
            &ArchiveQuery {
                after: Some(ids[6].clone()),
                ..q(3)
            },
        )
        .await
        .unwrap();
    assert_eq!(ids_of(&exact), ids[7..]);
    assert!(exact.complete);

    // flip-page: same page, newest first.
    let flipped = a
        .query(
            &romeo,
            &ArchiveQuery {
                before: Some(String::new()),
                flip_page: true,
                ..q(3)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        ids_of(&flipped),
        [ids[9].clone(), ids[8].clone(), ids[7].clone()]
    );
    assert_eq!(flipped.first_id(), Some(ids[9].as_str()));
    assert_eq!(flipped.first_index, Some(7));

    // `with`: a bare JID matches every resource, a full JID only itself.
    let bare = a
        .query(
            &romeo,
            &ArchiveQuery {
                with: Some(jid("juliet@capulet.example")),
                ..q(100)
            },
        )
        .await
        .unwrap();
    let expected: Vec<_> = (0..10)
        .filter(|n| n % 3 != 2)
        .map(|n| ids[n].clone())
        .collect();
    assert_eq!(ids_of(&bare), expected);
    assert_eq!(bare.count, 7);
    let full = a
        .query(
            &romeo,
            &ArchiveQuery {
                with: Some(jid("juliet@capulet.example/balcony")),
                ..q(100)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        ids_of(&full),
        [
            ids[0].clone(),
            ids[3].clone(),
            ids[6].clone(),
            ids[9].clone()
        ]
    );
    let nurse_full = a
        .query(
            &romeo,
            &ArchiveQuery {
                with: Some(jid("nurse@capulet.example/kitchen")),
                ..q(100)
            },
        )
        .await
        .unwrap();
    assert_eq!(nurse_full.count, 0);
    // A filtered set pages on its own indices.
    let page = a
        .query(
            &romeo,
            &ArchiveQuery {
                with: Some(jid("juliet@capulet.example")),
                after: Some(ids[3].clone()),
                ..q(2)
            },
        )
        .await
        .unwrap();
    assert_eq!(ids_of(&page), [ids[4].clone(), ids[6].clone()]);
    assert_eq!(
        (page.count, page.first_index, page.complete),
        (7, Some(3), false)
    );

    // start and end are inclusive.
    let span = a
        .query(
            &romeo,
            &ArchiveQuery {
                start: Some(at(2)),
                end: Some(at(4)),
                ..q(100)
            },
        )
        .await
        .unwrap();
    assert_eq!(ids_of(&span), ids[2..5]);
    assert_eq!(span.count, 3);
    let after_end = a
        .query(
            &romeo,
            &ArchiveQuery {
                start: Some(at(4) + Duration::from_millis(1)),
                ..q(100)
            },
        )
        .await
        .unwrap();
    assert_eq!(ids_of(&after_end), ids[5..]);

    // Form after-id / before-id are exclusive and define the result set.
    let range = a
        .query(
            &romeo,
            &ArchiveQuery {
                after_id: Some(ids[2].clone()),
                before_id: Some(ids[7].clone()),
                ..q(2)
            },
        )
        .await
        .unwrap();
    assert_eq!(ids_of(&range), ids[3..5]);
    assert_eq!(
        (range.count, range.first_index, range.complete),
        (4, Some(0), false)
    );

    // ids: exactly those, in archive order.
    let picked = a
        .query(
            &romeo,
            &ArchiveQuery {
                ids: vec![ids[8].clone(), ids[1].clone()],
                ..q(100)
            },
        )
        .await
        .unwrap();
    assert_eq!(ids_of(&picked), [ids[1].clone(), ids[8].clone()]);
    assert_eq!(picked.count, 2);

    // Unknown ids, or ids of another archive, are item-not-found.
    let juliet_first = a.query(&juliet, &q(1)).await.unwrap().items[0].id.clone();
    for bad in ["nope".to_string(), juliet_first.clone(), room_id.clone()] {
        let queries = [
            ArchiveQuery {
                ids: vec![ids[0].clone(), bad.clone()],
                ..q(10)
            },
            ArchiveQuery {
                after_id: Some(bad.clone()),
                ..q(10)
            },
            ArchiveQuery {
                before_id: Some(bad.clone()),
                ..q(10)
            },
            ArchiveQuery {
                after: Some(bad.clone()),
                ..q(10)
            },
            ArchiveQuery {
                before: Some(bad.clone()),
                ..q(10)
            },
        ];
        for query in &queries {
            assert_eq!(
                a.query(&romeo, query).await,
                Err(StoreError::NotFound),
                "{query:?}"
            );
        }
    }

    // max 0: just the count.
    let counted = a.query(&romeo, &q(0)).await.unwrap();
    assert_eq!(
        (counted.items.len(), counted.count, counted.complete),
        (0, 10, false)
    );

    // Preferences.
    let rj = j("romeo@montague.example");
    assert_eq!(a.prefs(&rj).await, Ok(None));
    let prefs = ArchivePrefs {
        default: DefaultPolicy::Roster,
        always: vec![jid("nurse@capulet.example"), jid("juliet@capulet.example")],
        never: vec![
            jid("tybalt@capulet.example/sword"),
            jid("nurse@capulet.example"),
        ],
    };
    a.set_prefs(&rj, &prefs).await.unwrap();
    assert_eq!(
        a.prefs(&rj).await,
        Ok(Some(ArchivePrefs {
            default: DefaultPolicy::Roster,
            always: vec![jid("juliet@capulet.example")],
            never: vec![
                jid("nurse@capulet.example"),
                jid("tybalt@capulet.example/sword")
            ],
        }))
    );
    let never = ArchivePrefs {
        default: DefaultPolicy::Never,
        ..ArchivePrefs::default()
    };
    a.set_prefs(&rj, &never).await.unwrap();
    assert_eq!(a.prefs(&rj).await, Ok(Some(never)));

    // Retention: user archives only, oldest first.
    assert_eq!(a.purge_before(OwnerKind::User, at(5)).await, Ok(10));
    let kept = a.query(&romeo, &q(100)).await.unwrap();
    assert_eq!(ids_of(&kept), ids[5..]);
    assert_eq!(a.query(&juliet, &q(100)).await.unwrap().count, 5);
    assert_eq!(a.query(&room_romeo, &q(100)).await.unwrap().count, 1);
    assert_eq!(
        a.query(
            &romeo,
            &ArchiveQuery {
                after: Some(ids[0].clone()),
                ..q(10)
            }
        )
        .await,
        Err(StoreError::NotFound)
    );
    // Purged ids are not handed out again; new items go after the old.
    let newer = a
        .append(
            &romeo,
            NewItem {
                with: &jid("juliet@capulet.example"),
                stamp: at(1),
                stanza: "<message/>",
            },
        )
        .await
        .unwrap();
    assert!(!ids.contains(&newer));
    let kept = a.query(&romeo, &q(100)).await.unwrap();
    assert_eq!(kept.last_id(), Some(newer.as_str()));

    // Replacing an item (a XEP-0425 tombstone) keeps its id, place and stamp.
    let before = a.query(&romeo, &q(100)).await.unwrap();
    let target = before.items[1].clone();
    a.replace(&romeo, &target.id, "<message><retracted/></message>")
        .await
        .unwrap();
    let after = a.query(&romeo, &q(100)).await.unwrap();
    assert_eq!(ids_of(&after), ids_of(&before));
    assert_eq!(after.items[1].stanza, "<message><retracted/></message>");
    assert_eq!(after.items[1].stamp, target.stamp);
    assert_eq!(after.items[0], before.items[0]);
    // Only in its own archive.
    assert_eq!(
        a.replace(&room_romeo, &target.id, "<message/>").await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        a.replace(&romeo, "no-such-id", "<message/>").await,
        Err(StoreError::NotFound)
    );

    // Removing a user's archive takes the prefs, not the room archive at that address.
    assert_eq!(a.remove(&romeo).await, Ok(6));
    assert_eq!(a.query(&romeo, &q(10)).await.unwrap().count, 0);
    assert_eq!(a.prefs(&rj).await, Ok(None));
    assert_eq!(a.query(&room_romeo, &q(10)).await.unwrap().count, 1);
    assert_eq!(a.query(&juliet, &q(10)).await.unwrap().count, 5);
    assert_eq!(a.remove(&romeo).await, Ok(0));

    concurrent_appends_are_unique(s).await;
}

/// Concurrent appends each get their own id and all land.
async fn concurrent_appends_are_unique(s: &Stores) {
    let owner = ArchiveOwner::User(j("rosaline@capulet.example"));
    let mut tasks = Vec::new();
    for n in 0..50 {
        let archive = Arc::clone(&s.archive);
        let owner = owner.clone();
        tasks.push(tokio::spawn(async move {
            archive
                .append(
                    &owner,
                    NewItem {
                        with: &jid("romeo@montague.example"),
                        stamp: SystemTime::now(),
                        stanza: &format!("<message>{n}</message>"),
                    },
                )
                .await
                .unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let page = s.archive.query(&owner, &q(100)).await.unwrap();
    assert_eq!(page.count, 50);
    let mut stored = ids_of(&page);
    stored.sort();
    ids.sort();
    assert_eq!(stored, ids);
}

// ---------------------------------------------------------------- backends

// ------------------------------------------------------------ reputation

async fn reputation_contract(s: &Stores) {
    use waxwing_store::DomainReputation;
    let r = &s.reputation;
    assert_eq!(r.get("spam.example").await, Ok(None));
    assert_eq!(r.list().await, Ok(vec![]));
    let mut a = DomainReputation::new("spam.example", 1_700_000_000);
    a.spam_reports = 3;
    a.bounces = 2;
    a.failed_dialbacks = 1;
    a.rate_limit_hits = 4;
    a.score = 5.25;
    r.put(&a).await.unwrap();
    assert_eq!(r.get("spam.example").await, Ok(Some(a.clone())));
    // put replaces the whole record.
    a.blocked = true;
    a.score = 0.5;
    a.updated_at += 60;
    r.put(&a).await.unwrap();
    let b = DomainReputation::new("ok.example", 1_700_000_100);
    r.put(&b).await.unwrap();
    assert_eq!(r.get("spam.example").await, Ok(Some(a.clone())));
    // Sorted by domain.
    assert_eq!(r.list().await, Ok(vec![b, a]));
}

// ---------------------------------------------------------------- invites

fn invite(id: &str, seed: u8, kind: waxwing_store::InviteKind) -> waxwing_store::Invite {
    waxwing_store::Invite {
        id: id.into(),
        token_hash: vec![seed; 32],
        host: "montague.example".into(),
        kind,
        creator: None,
        username: None,
        created_at: 1_700_000_000 + i64::from(seed),
        expires_at: 1_700_100_000,
        max_uses: 1,
        uses: 0,
    }
}

async fn invites_contract(s: &Stores) {
    use waxwing_store::InviteKind::*;
    let i = &s.invites;
    let romeo = j("romeo@montague.example");
    let t = 1_700_050_000;
    assert_eq!(i.by_token(&[1; 32]).await, Ok(None));
    assert_eq!(i.list(None, None).await, Ok(vec![]));

    let mut a = invite("a1", 1, Register);
    a.username = Some("juliet".into());
    i.create(&a).await.unwrap();
    // Neither the id nor the token hash may be reused.
    assert_eq!(i.create(&a).await, Err(StoreError::AlreadyExists));
    let mut same_hash = invite("other", 1, Roster);
    same_hash.created_at += 5;
    assert_eq!(i.create(&same_hash).await, Err(StoreError::AlreadyExists));
    assert_eq!(i.by_token(&[1; 32]).await, Ok(Some(a.clone())));

    let mut b = invite("b2", 2, RosterAndRegister);
    b.creator = Some(romeo.clone());
    b.max_uses = 2;
    i.create(&b).await.unwrap();
    let mut c = invite("c3", 3, Roster);
    c.creator = Some(romeo.clone());
    c.host = "capulet.example".into();
    i.create(&c).await.unwrap();

    // Listing: oldest first, filtered by host and by creator.
    assert_eq!(
        i.list(None, None).await,
        Ok(vec![a.clone(), b.clone(), c.clone()])
    );
    assert_eq!(
        i.list(Some("montague.example"), None).await,
        Ok(vec![a.clone(), b.clone()])
    );
    assert_eq!(
        i.list(None, Some(&romeo)).await,
        Ok(vec![b.clone(), c.clone()])
    );
    assert_eq!(
        i.list(Some("capulet.example"), Some(&romeo)).await,
        Ok(vec![c.clone()])
    );
    assert_eq!(i.count_pending(&romeo, t).await, Ok(2));

    // A fixed username is reserved while the invitation can be redeemed.
    assert_eq!(
        i.username_reserved("montague.example", "juliet", t).await,
        Ok(true)
    );
    assert_eq!(
        i.username_reserved("capulet.example", "juliet", t).await,
        Ok(false)
    );
    assert_eq!(
        i.username_reserved("montague.example", "juliet", a.expires_at)
            .await,
        Ok(false)
    );

    // Claims: counted once per use, never after expiry or the last use.
    assert_eq!(i.claim(&[9; 32], t).await, Ok(None));
    assert_eq!(i.claim(&[1; 32], a.expires_at).await, Ok(None));
    let claimed = i.claim(&[1; 32], t).await.unwrap().unwrap();
    assert_eq!(claimed.uses, 1);
    assert_eq!(claimed.id, "a1");
    assert_eq!(i.claim(&[1; 32], t).await, Ok(None));
    assert_eq!(
        i.username_reserved("montague.example", "juliet", t).await,
        Ok(false)
    );
    // A released use can be claimed again; releasing never goes below zero.
    i.release("a1").await.unwrap();
    assert_eq!(i.by_token(&[1; 32]).await.unwrap().unwrap().uses, 0);
    i.release("a1").await.unwrap();
    assert_eq!(i.by_token(&[1; 32]).await.unwrap().unwrap().uses, 0);
    i.release("nonexistent").await.unwrap();
    assert!(i.claim(&[1; 32], t).await.unwrap().is_some());

    // A two-use invitation, claimed concurrently by four: exactly two win.
    let results = futures_claims(s, [2; 32], t).await;
    assert_eq!(results, 2);
    assert_eq!(i.count_pending(&romeo, t).await, Ok(1));

    // Revoking.
    i.revoke("c3").await.unwrap();
    assert_eq!(i.revoke("c3").await, Err(StoreError::NotFound));
    assert_eq!(i.claim(&[3; 32], t).await, Ok(None));

    // Purging the expired.
    let mut d = invite("d4", 4, Register);
    d.expires_at = 1_800_000_000;
    i.create(&d).await.unwrap();
    assert_eq!(i.purge_expired(1_700_100_000).await, Ok(0));
    assert_eq!(i.purge_expired(1_700_100_001).await, Ok(2));
    assert_eq!(i.list(None, None).await, Ok(vec![d.clone()]));

    // A deleted creator's invitations go with it.
    let mut e = invite("e5", 5, Roster);
    e.creator = Some(romeo.clone());
    i.create(&e).await.unwrap();
    i.remove_creator(&romeo).await.unwrap();
    assert_eq!(i.list(None, None).await, Ok(vec![d]));
}

async fn futures_claims(s: &Stores, hash: [u8; 32], now: i64) -> usize {
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = s.invites.clone();
            tokio::spawn(async move { store.claim(&hash, now).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        if t.await.unwrap().is_some() {
            won += 1;
        }
    }
    won
}

// ---------------------------------------------------------------- pubsub

async fn pubsub_contract(s: &Stores) {
    use waxwing_store::{PubSubAffiliation, PubSubItem, StoreError, SubscriptionState};
    let p = &s.pubsub;
    let svc = j("juliet@capulet.example");
    let other = BareJid::domain_only("pubsub.capulet.example").unwrap();
    let item = |id: &str, payload: &str| PubSubItem {
        id: id.into(),
        publisher: Jid::parse("juliet@capulet.example/balcony").unwrap(),
        payload: payload.into(),
    };
    let ids = |items: Vec<PubSubItem>| items.into_iter().map(|i| i.id).collect::<Vec<_>>();

    assert_eq!(p.node_config(&svc, "n").await, Ok(None));
    assert_eq!(p.items(&svc, "n").await, Err(StoreError::NotFound));
    assert_eq!(
        p.publish(&svc, "n", &item("a", "<x/>"), None).await,
        Err(StoreError::NotFound)
    );
    p.create_node(&svc, "n", "<c1/>").await.unwrap();
    assert_eq!(
        p.create_node(&svc, "n", "<c2/>").await,
        Err(StoreError::AlreadyExists)
    );
    p.create_node(&other, "n", "<o/>").await.unwrap();
    assert_eq!(p.node_config(&svc, "n").await, Ok(Some("<c1/>".into())));
    p.set_node_config(&svc, "n", "<c3/>").await.unwrap();
    assert_eq!(p.node_config(&svc, "n").await, Ok(Some("<c3/>".into())));
    assert_eq!(
        p.set_node_config(&svc, "zz", "<c/>").await,
        Err(StoreError::NotFound)
    );
    p.create_node(&svc, "a-node", "<c/>").await.unwrap();
    assert_eq!(p.nodes(&svc).await, Ok(vec!["a-node".into(), "n".into()]));

    // Items: newest first; republishing moves an id to the front; max_items trims.
    for id in ["1", "2", "3"] {
        assert_eq!(
            p.publish(&svc, "n", &item(id, "<x/>"), None).await,
            Ok(vec![])
        );
    }
    p.publish(&svc, "n", &item("1", "<y/>"), None)
        .await
        .unwrap();
    let got = p.items(&svc, "n").await.unwrap();
    assert_eq!(got[0], item("1", "<y/>"));
    assert_eq!(ids(got), vec!["1", "3", "2"]);
    assert_eq!(
        p.publish(&svc, "n", &item("4", "<x/>"), Some(2)).await,
        Ok(vec!["2".to_string(), "3".to_string()])
    );
    assert_eq!(ids(p.items(&svc, "n").await.unwrap()), vec!["4", "1"]);
    assert_eq!(p.retract(&svc, "n", "1").await, Ok(true));
    assert_eq!(p.retract(&svc, "n", "1").await, Ok(false));
    assert_eq!(ids(p.items(&svc, "n").await.unwrap()), vec!["4"]);
    assert!(p.items(&other, "n").await.unwrap().is_empty());
    p.purge(&svc, "n").await.unwrap();
    assert!(p.items(&svc, "n").await.unwrap().is_empty());

    // Affiliations and subscriptions.
    let romeo = j("romeo@montague.example");
    p.set_affiliation(&svc, "n", &svc, Some(PubSubAffiliation::Owner))
        .await
        .unwrap();
    p.set_affiliation(&svc, "n", &romeo, Some(PubSubAffiliation::Member))
        .await
        .unwrap();
    p.set_affiliation(&svc, "n", &romeo, Some(PubSubAffiliation::Publisher))
        .await
        .unwrap();
    assert_eq!(
        p.affiliations(&svc, "n").await,
        Ok(vec![
            (svc.clone(), PubSubAffiliation::Owner),
            (romeo.clone(), PubSubAffiliation::Publisher)
        ])
    );
    p.set_affiliation(&svc, "n", &romeo, None).await.unwrap();
    assert_eq!(p.affiliations(&svc, "n").await.unwrap().len(), 1);
    let full = Jid::parse("romeo@montague.example/orchard").unwrap();
    p.set_subscription(&svc, "n", &full, Some(SubscriptionState::Pending))
        .await
        .unwrap();
    p.set_subscription(&svc, "n", &full, Some(SubscriptionState::Subscribed))
        .await
        .unwrap();
    p.set_subscription(
        &svc,
        "n",
        &Jid::from(romeo.clone()),
        Some(SubscriptionState::Pending),
    )
    .await
    .unwrap();
    assert_eq!(
        p.subscriptions(&svc, "n").await,
        Ok(vec![
            (Jid::from(romeo.clone()), SubscriptionState::Pending),
            (full.clone(), SubscriptionState::Subscribed),
        ])
    );
    p.set_subscription(&svc, "n", &full, None).await.unwrap();
    assert_eq!(p.subscriptions(&svc, "n").await.unwrap().len(), 1);

    // Deleting a node takes everything of it; remove_service takes all nodes.
    p.publish(&svc, "n", &item("5", "<x/>"), None)
        .await
        .unwrap();
    p.delete_node(&svc, "n").await.unwrap();
    assert_eq!(p.delete_node(&svc, "n").await, Err(StoreError::NotFound));
    p.create_node(&svc, "n", "<c/>").await.unwrap();
    assert!(p.items(&svc, "n").await.unwrap().is_empty());
    assert!(p.subscriptions(&svc, "n").await.unwrap().is_empty());
    assert!(p.affiliations(&svc, "n").await.unwrap().is_empty());
    p.remove_service(&svc).await.unwrap();
    assert_eq!(p.nodes(&svc).await, Ok(vec![]));
    assert_eq!(p.nodes(&other).await, Ok(vec!["n".to_string()]));
}

async fn pubsub_subscription_options_contract(s: &Stores) {
    use waxwing_store::{StoreError, SubscriptionState};
    let p = &s.pubsub;
    let svc = BareJid::domain_only("pubsub.capulet.example").unwrap();
    let romeo = Jid::parse("romeo@montague.example").unwrap();
    let phone = Jid::parse("romeo@montague.example/phone").unwrap();
    assert_eq!(
        p.subscription_options(&svc, "n", &romeo).await,
        Err(StoreError::NotFound)
    );
    p.create_node(&svc, "n", "<c/>").await.unwrap();
    assert_eq!(p.subscription_options(&svc, "n", &romeo).await, Ok(None));
    assert_eq!(
        p.set_subscription_options(&svc, "n", &romeo, "<x/>").await,
        Err(StoreError::NotFound)
    );
    p.set_subscription(&svc, "n", &romeo, Some(SubscriptionState::Pending))
        .await
        .unwrap();
    p.set_subscription(&svc, "n", &phone, Some(SubscriptionState::Subscribed))
        .await
        .unwrap();
    assert_eq!(
        p.subscription_options(&svc, "n", &romeo).await,
        Ok(Some(String::new()))
    );
    p.set_subscription_options(&svc, "n", &romeo, "<x a='1'/>")
        .await
        .unwrap();
    // A state change keeps the options.
    p.set_subscription(&svc, "n", &romeo, Some(SubscriptionState::Subscribed))
        .await
        .unwrap();
    assert_eq!(
        p.subscriptions_with_options(&svc, "n").await.unwrap(),
        vec![
            (
                romeo.clone(),
                SubscriptionState::Subscribed,
                "<x a='1'/>".into()
            ),
            (phone.clone(), SubscriptionState::Subscribed, String::new()),
        ]
    );
    // Unsubscribing forgets them.
    p.set_subscription(&svc, "n", &romeo, None).await.unwrap();
    p.set_subscription(&svc, "n", &romeo, Some(SubscriptionState::Subscribed))
        .await
        .unwrap();
    assert_eq!(
        p.subscription_options(&svc, "n", &romeo).await,
        Ok(Some(String::new()))
    );
}

async fn pubsub_feeds_contract(s: &Stores) {
    use waxwing_store::{FeedKey, StoreError};
    let p = &s.pubsub;
    let key = FeedKey {
        service: BareJid::domain_only("pubsub.capulet.example").unwrap(),
        node: "news".into(),
        url: "https://capulet.example/feed.xml".into(),
    };
    let other = FeedKey {
        url: "https://capulet.example/atom.xml".into(),
        ..key.clone()
    };
    assert_eq!(p.feeds().await, Ok(vec![]));
    assert_eq!(
        p.set_feed_validators(&key, Some("\"e1\""), None).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        p.mark_feed_seen(&key, "a", 10).await,
        Err(StoreError::NotFound)
    );
    p.save_feed(&key, 900, false).await.unwrap();
    p.save_feed(&other, 60, true).await.unwrap();
    p.set_feed_validators(&key, Some("\"e1\""), Some("Tue, 01 Jan 2030 00:00:00 GMT"))
        .await
        .unwrap();
    // Saving again changes interval and origin but keeps the validators.
    p.save_feed(&key, 120, true).await.unwrap();
    let feeds = p.feeds().await.unwrap();
    assert_eq!(feeds.len(), 2);
    let f = feeds.iter().find(|f| f.key == key).unwrap();
    assert_eq!((f.interval_secs, f.admin), (120, true));
    assert_eq!(f.etag.as_deref(), Some("\"e1\""));
    assert_eq!(
        f.last_modified.as_deref(),
        Some("Tue, 01 Jan 2030 00:00:00 GMT")
    );
    let g = feeds.iter().find(|f| f.key == other).unwrap();
    assert_eq!(
        (g.interval_secs, g.admin, g.etag.as_deref()),
        (60, true, None)
    );

    // Seen ids are per feed, bounded by `keep` (oldest go first), and a
    // re-marked id counts as the newest.
    let all = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for id in ["a", "b", "c"] {
        p.mark_feed_seen(&key, id, 3).await.unwrap();
    }
    p.mark_feed_seen(&other, "z", 3).await.unwrap();
    assert_eq!(
        p.feed_seen(&key, &all(&["a", "b", "c", "d", "z"])).await,
        Ok(all(&["a", "b", "c"]))
    );
    p.mark_feed_seen(&key, "a", 3).await.unwrap();
    p.mark_feed_seen(&key, "d", 3).await.unwrap();
    assert_eq!(
        p.feed_seen(&key, &all(&["a", "b", "c", "d"])).await,
        Ok(all(&["a", "c", "d"]))
    );
    assert_eq!(
        p.feed_seen(&other, &all(&["a", "z"])).await,
        Ok(all(&["z"]))
    );

    // Removing a feed forgets its state.
    assert_eq!(p.remove_feed(&key).await, Ok(true));
    assert_eq!(p.remove_feed(&key).await, Ok(false));
    assert_eq!(p.feed_seen(&key, &all(&["a"])).await, Ok(vec![]));
    p.save_feed(&key, 900, false).await.unwrap();
    let f = p.feeds().await.unwrap();
    let f = f.iter().find(|f| f.key == key).unwrap();
    assert_eq!((f.etag.clone(), f.admin), (None, false));
    assert_eq!(p.feed_seen(&key, &all(&["a", "d"])).await, Ok(vec![]));
}

macro_rules! contract_tests {
    ($($name:ident => $contract:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn memory_backend() {
                $contract(&memory()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite_file() {
                let dir = tempfile::tempdir().unwrap();
                $contract(&open(&sqlite_url(dir.path())).await.unwrap()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite_in_memory() {
                $contract(&open("sqlite::memory:").await.unwrap()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                $contract(&open(&postgres_url().await).await.unwrap()).await;
            }
        }
    )*};
}

contract_tests! {
    accounts => accounts_contract,
    roster => roster_contract,
    offline => offline_contract,
    archive => archive_contract,
    blocklist => blocklist_contract,
    private_xml => private_xml_contract,
    last_activity => last_activity_contract,
    muc => muc_contract,
    pubsub => pubsub_contract,
    pubsub_feeds => pubsub_feeds_contract,
    pubsub_subscription_options => pubsub_subscription_options_contract,
    reputation => reputation_contract,
    invites => invites_contract,
}

// ------------------------------------------------------- SQLite specifics

/// Data written and acknowledged is there after the stores are dropped and
/// the file is opened again (as after a restart).
#[tokio::test]
async fn sqlite_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    data_survives_reopen(&sqlite_url(dir.path())).await;
}

async fn data_survives_reopen(url: &str) {
    let url = url.to_string();
    let romeo = j("romeo@montague.example");
    let juliet = j("juliet@capulet.example");

    let (version, messages) = {
        let s = open(&url).await.unwrap();
        s.accounts
            .create(&romeo, &[secret("SCRAM-SHA-256", 5)])
            .await
            .unwrap();
        let mut item = RosterItem::new(juliet.clone());
        item.groups = vec!["Lovers".into()];
        item.subscription = Subscription::Both;
        let version = s.roster.put(&romeo, &item).await.unwrap();
        s.offline
            .push(&romeo, "<message>a</message>", 10)
            .await
            .unwrap();
        s.offline
            .push(&romeo, "<message>b</message>", 10)
            .await
            .unwrap();
        (version, s.offline.list(&romeo).await.unwrap())
    };

    let s = open(&url).await.unwrap();
    assert_eq!(
        s.accounts.secrets(&romeo).await,
        Ok(Some(vec![secret("SCRAM-SHA-256", 5)]))
    );
    assert_eq!(s.roster.version(&romeo).await, Ok(version));
    let items = s.roster.items(&romeo).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].groups, vec!["Lovers".to_string()]);
    assert_eq!(items[0].subscription, Subscription::Both);
    assert_eq!(s.offline.list(&romeo).await, Ok(messages.clone()));
    // Ids keep increasing across restarts.
    s.offline
        .push(&romeo, "<message>c</message>", 10)
        .await
        .unwrap();
    assert!(s.offline.list(&romeo).await.unwrap()[2].id > messages[1].id);
}

/// Opening twice (a restart) does not re-run or trip over migrations, and
/// two handles to one file see each other's writes.
#[tokio::test]
async fn sqlite_reopen_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let a = open(&url).await.unwrap();
    let b = open(&url).await.unwrap();
    a.accounts
        .create(&j("romeo@montague.example"), &[])
        .await
        .unwrap();
    assert_eq!(b.accounts.count(None).await, Ok(1));
}

// ---------------------------------------------------- PostgreSQL specifics

#[tokio::test]
async fn postgres_data_survives_reopen() {
    data_survives_reopen(&postgres_url().await).await;
}

/// Nodes of a cluster starting at once on an empty database: one migrates,
/// the others wait for it (sqlx's migrator lock) and find the schema done.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_opens_migrate_once() {
    let url = postgres_url().await;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { open(&url).await })
        })
        .collect();
    let mut opened = Vec::new();
    for t in tasks {
        opened.push(t.await.unwrap().unwrap());
    }
    opened[0]
        .accounts
        .create(&j("romeo@montague.example"), &[])
        .await
        .unwrap();
    for s in &opened {
        assert_eq!(s.accounts.count(None).await, Ok(1));
    }
}

/// A server that is not there is an error at open (the node does not
/// start half-working), and the error does not carry the password.
#[tokio::test]
async fn postgres_unreachable_fails_open_without_echoing_the_password() {
    let port = waxwing_testsvc::free_port();
    let err = open(&format!(
        "postgres://waxwing:hunter2@127.0.0.1:{port}/waxwing"
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test]
async fn postgres_bad_url_is_refused_without_echoing_it() {
    let err = open("postgres://waxwing:hunter2@127.0.0.1:notaport/waxwing")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test]
async fn sqlite_memory_databases_are_separate() {
    let a = open("sqlite::memory:").await.unwrap();
    let b = open("sqlite::memory:").await.unwrap();
    a.accounts
        .create(&j("romeo@montague.example"), &[])
        .await
        .unwrap();
    assert_eq!(b.accounts.count(None).await, Ok(0));
}

#[tokio::test]
async fn unknown_scheme_is_refused_without_echoing_the_url() {
    let err = open("mysql://user:hunter2@db/waxwing").await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)));
    assert!(!err.to_string().contains("hunter2"));
}

#[tokio::test]
async fn memory_clones_share_data() {
    let s = memory();
    let t = s.clone();
    s.accounts
        .create(&j("romeo@montague.example"), &[])
        .await
        .unwrap();
    assert_eq!(t.accounts.count(None).await, Ok(1));
}
