//! `waxwing_store::transfer::migrate`: a populated SQLite database copied to
//! a real PostgreSQL (and back), compared table by table and through the
//! store API, with the target's guards (not empty, same database).

use std::time::{Duration, UNIX_EPOCH};

use waxwing_proto::jid::{BareJid, Jid};
use waxwing_store::transfer::{MigrateError, TableCount, migrate, table_counts};
use waxwing_store::{
    Affiliation, ArchiveOwner, ArchivePrefs, ArchiveQuery, DefaultPolicy, DomainReputation,
    FeedKey, LastActivity, NewItem, PubSubAffiliation, PubSubItem, RoomAffiliation, RoomRecord,
    RosterItem, StoredRoom, StoredSecret, Stores, Subscription, SubscriptionState, open,
};
use waxwing_testsvc::postgres::Cluster;

fn j(s: &str) -> BareJid {
    BareJid::parse(s).unwrap()
}

fn any(s: &str) -> Jid {
    Jid::parse(s).unwrap()
}

async fn postgres_url() -> String {
    let cluster = tokio::task::spawn_blocking(Cluster::shared).await.unwrap();
    cluster.database().await
}

const USERS: usize = 30;
const MESSAGES: usize = 700; // more than one page of the copy (500)

fn user(i: usize) -> BareJid {
    j(&format!("user{i}@example.org"))
}

/// Something in every table, and enough archive rows for several pages.
async fn populate(s: &Stores) {
    for i in 0..USERS {
        let u = user(i);
        let secret = StoredSecret {
            mechanism: "SCRAM-SHA-256".into(),
            salt: vec![i as u8; 16],
            iterations: 4096,
            stored_key: vec![1, 2, 3, i as u8],
            server_key: vec![0xff, 0, i as u8],
        };
        s.accounts.create(&u, &[secret]).await.unwrap();
        let mut item = RosterItem::new(user((i + 1) % USERS));
        item.name = Some(format!("Friend {i}"));
        item.groups = vec!["Zeta".into(), "Alpha".into()];
        item.subscription = Subscription::Both;
        s.roster.put(&u, &item).await.unwrap();
        let mut pending = RosterItem::new(j(&format!("stranger{i}@remote.example")));
        pending.pending_in = true;
        pending.pending_in_stanza = Some("<presence type='subscribe'/>".into());
        pending.in_roster = false;
        s.roster.put(&u, &pending).await.unwrap();
        s.offline
            .push(
                &u,
                &format!("<message id='o{i}'><body>offline ☃</body></message>"),
                100,
            )
            .await
            .unwrap();
        s.blocklist
            .block(&u, &[any("spammer@bad.example"), any("bad.example/x")])
            .await
            .unwrap();
        s.private_xml
            .set(
                &u,
                "{storage:bookmarks}storage",
                "<storage xmlns='storage:bookmarks'/>",
            )
            .await
            .unwrap();
        s.private_xml
            .set(
                &u,
                "vcard-temp",
                "<vCard xmlns='vcard-temp'><FN>U</FN></vCard>",
            )
            .await
            .unwrap();
        s.archive
            .set_prefs(
                &u,
                &ArchivePrefs {
                    default: DefaultPolicy::Roster,
                    always: vec![any("boss@example.org")],
                    never: vec![any("noisy@example.org/phone")],
                },
            )
            .await
            .unwrap();
    }
    s.last_activity
        .set_many(&[(
            user(0),
            LastActivity {
                at: 1_700_000_000,
                status: "gone".into(),
            },
        )])
        .await
        .unwrap();
    s.invites
        .create(&waxwing_store::Invite {
            id: "inv1".into(),
            token_hash: vec![7; 32],
            host: "example.org".into(),
            kind: waxwing_store::InviteKind::Roster,
            creator: Some(user(0)),
            username: None,
            created_at: 1_700_000_000,
            expires_at: 1_700_100_000,
            max_uses: 3,
            uses: 1,
        })
        .await
        .unwrap();
    let with = any("friend@example.org/res");
    for m in 0..MESSAGES {
        s.archive
            .append(
                &ArchiveOwner::User(user(m % 3)),
                NewItem {
                    with: &with,
                    stamp: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + m as u64),
                    stanza: &format!("<message><body>{m}</body></message>"),
                },
            )
            .await
            .unwrap();
    }
    let room = j("lounge@conference.example.org");
    s.muc
        .replace_room(&StoredRoom {
            room: RoomRecord {
                jid: room.clone(),
                config: "<x xmlns='jabber:x:data' type='submit'/>".into(),
                subject: "Welcome".into(),
                subject_by: Some("owner".into()),
            },
            affiliations: vec![
                RoomAffiliation {
                    jid: user(0),
                    affiliation: Affiliation::Owner,
                    nick: Some("boss".into()),
                    reason: None,
                },
                RoomAffiliation {
                    jid: user(1),
                    affiliation: Affiliation::Outcast,
                    nick: None,
                    reason: Some("spam".into()),
                },
            ],
        })
        .await
        .unwrap();
    s.archive
        .append(
            &ArchiveOwner::Room(room.clone()),
            NewItem {
                with: &any("lounge@conference.example.org/boss"),
                stamp: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                stanza: "<message type='groupchat'><body>hi</body></message>",
            },
        )
        .await
        .unwrap();
    let service = j("pubsub.example.org");
    s.pubsub
        .create_node(&service, "news", "<x/>")
        .await
        .unwrap();
    for k in 0..3 {
        s.pubsub
            .publish(
                &service,
                "news",
                &PubSubItem {
                    id: format!("item{k}"),
                    publisher: any("user0@example.org/laptop"),
                    payload: format!("<entry>{k}</entry>"),
                },
                Some(10),
            )
            .await
            .unwrap();
    }
    s.pubsub
        .set_affiliation(&service, "news", &user(0), Some(PubSubAffiliation::Owner))
        .await
        .unwrap();
    s.pubsub
        .set_subscription(
            &service,
            "news",
            &any("user1@example.org/phone"),
            Some(SubscriptionState::Subscribed),
        )
        .await
        .unwrap();
    s.pubsub
        .set_subscription_options(&service, "news", &any("user1@example.org/phone"), "<x/>")
        .await
        .unwrap();
    let feed = FeedKey {
        service: service.clone(),
        node: "news".into(),
        url: "https://feeds.example.org/atom.xml".into(),
    };
    s.pubsub.save_feed(&feed, 900, true).await.unwrap();
    s.pubsub
        .set_feed_validators(&feed, Some("\"etag\""), None)
        .await
        .unwrap();
    s.pubsub
        .mark_feed_seen(&feed, "entry-1", 100)
        .await
        .unwrap();
    s.reputation
        .put(&DomainReputation {
            domain: "bad.example".into(),
            spam_reports: 3,
            bounces: 1,
            failed_dialbacks: 0,
            rate_limit_hits: 7,
            score: -12.5,
            updated_at: 1_700_000_000,
            blocked: true,
        })
        .await
        .unwrap();
}

/// What the store API reads back is the same on both.
async fn assert_same(a: &Stores, b: &Stores) {
    assert_eq!(a.accounts.list(None).await, b.accounts.list(None).await);
    for i in 0..USERS {
        let u = user(i);
        assert_eq!(a.accounts.secrets(&u).await, b.accounts.secrets(&u).await);
        assert_eq!(a.roster.items(&u).await, b.roster.items(&u).await);
        assert_eq!(a.roster.version(&u).await, b.roster.version(&u).await);
        assert_eq!(a.offline.list(&u).await, b.offline.list(&u).await);
        assert_eq!(a.blocklist.list(&u).await, b.blocklist.list(&u).await);
        assert_eq!(
            a.private_xml.get(&u, "vcard-temp").await,
            b.private_xml.get(&u, "vcard-temp").await
        );
        assert_eq!(a.archive.prefs(&u).await, b.archive.prefs(&u).await);
        assert_eq!(a.last_activity.get(&u).await, b.last_activity.get(&u).await);
        let q = ArchiveQuery {
            max: 1000,
            ..ArchiveQuery::default()
        };
        let owner = ArchiveOwner::User(u.clone());
        assert_eq!(
            a.archive.query(&owner, &q).await,
            b.archive.query(&owner, &q).await
        );
    }
    assert_eq!(
        a.muc.rooms("conference.example.org").await,
        b.muc.rooms("conference.example.org").await
    );
    let service = j("pubsub.example.org");
    assert_eq!(
        a.pubsub.items(&service, "news").await,
        b.pubsub.items(&service, "news").await
    );
    assert_eq!(
        a.pubsub.subscriptions_with_options(&service, "news").await,
        b.pubsub.subscriptions_with_options(&service, "news").await
    );
    assert_eq!(
        a.pubsub.affiliations(&service, "news").await,
        b.pubsub.affiliations(&service, "news").await
    );
    assert_eq!(a.pubsub.feeds().await, b.pubsub.feeds().await);
    assert_eq!(a.reputation.list().await, b.reputation.list().await);
}

fn rows(counts: &[TableCount], table: &str) -> u64 {
    counts.iter().find(|c| c.table == table).unwrap().rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_postgres_and_back_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("waxwing.db").display());
    let source = open(&sqlite).await.unwrap();
    populate(&source).await;

    let pg = postgres_url().await;
    let copied = migrate(&sqlite, &pg, false).await.unwrap();
    // Every table had rows, and the target has as many.
    for c in &copied {
        assert!(c.rows > 0, "{} is empty in the populated source", c.table);
    }
    assert_eq!(rows(&copied, "archive_items"), MESSAGES as u64 + 1);
    assert_eq!(table_counts(&pg).await.unwrap(), copied);
    assert_eq!(table_counts(&sqlite).await.unwrap(), copied);

    let target = open(&pg).await.unwrap();
    assert_same(&source, &target).await;

    // New rows continue the copied ids (identity sequences moved on).
    let u = user(0);
    let before = target.offline.list(&u).await.unwrap();
    target.offline.push(&u, "<message/>", 100).await.unwrap();
    let after = target.offline.list(&u).await.unwrap();
    assert!(after.last().unwrap().id > before.last().unwrap().id);

    // A second run refuses the non-empty target and changes nothing...
    let err = migrate(&sqlite, &pg, false).await.unwrap_err();
    assert!(matches!(err, MigrateError::TargetNotEmpty { .. }), "{err}");
    assert_eq!(
        rows(&table_counts(&pg).await.unwrap(), "offline_messages"),
        rows(&copied, "offline_messages") + 1
    );
    // ...and --force replaces the contents with the source's again.
    let again = migrate(&sqlite, &pg, true).await.unwrap();
    assert_eq!(again, copied);
    assert_eq!(table_counts(&pg).await.unwrap(), copied);

    // Back to a fresh SQLite file: the same again.
    let back = format!("sqlite://{}", dir.path().join("back.db").display());
    assert_eq!(migrate(&pg, &back, false).await.unwrap(), copied);
    assert_same(&source, &open(&back).await.unwrap()).await;
}

/// A mistyped source path is an error, not an empty database copied.
#[tokio::test]
async fn a_missing_sqlite_source_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("sqlite://{}", dir.path().join("typo.db").display());
    let target = format!("sqlite://{}", dir.path().join("target.db").display());
    let err = migrate(&missing, &target, false).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!dir.path().join("typo.db").exists());
}

#[tokio::test]
async fn migrating_onto_itself_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("waxwing.db").display());
    assert_eq!(
        migrate(&sqlite, &sqlite, true).await.unwrap_err(),
        MigrateError::SameDatabase
    );
}
