//! PushUpdate end to end: the application drains the queue between blocks
//! and the pushed write appears in the committing block, in every
//! subscription and in the store.

use statestream_serve::proto::v1::{self, subscribe_request::Start};

use crate::util::*;

#[test]
fn a_pushed_write_is_committed_by_the_application_and_streamed() {
    let mut node = Node::in_memory("push_updates = true");
    node.commit();
    let rt = runtime();
    let address = node.address();
    let task = rt.spawn(async move {
        let mut c = client(&address).await;
        let mut stream = c
            .subscribe(subscribe_request(Start::FromHeight(2)))
            .await
            .unwrap()
            .into_inner();
        let height = c
            .push_update(v1::PushUpdateRequest {
                store: "b".into(),
                key: b"pushed".to_vec(),
                value: b"hello".to_vec(),
                delete: false,
            })
            .await
            .unwrap()
            .into_inner()
            .height;
        let mut r = Received::default();
        read_until(&mut stream, &mut r, height).await;
        let unknown = c
            .push_update(v1::PushUpdateRequest {
                store: "zzz".into(),
                key: b"k".to_vec(),
                value: vec![],
                delete: false,
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
        (height, r)
    });
    while !task.is_finished() {
        node.commit();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (height, received) = rt.block_on(task).unwrap();
    let (_, changes) = received.blocks.iter().find(|(h, _)| *h == height).unwrap();
    assert!(changes.contains(&("b".into(), b"pushed".to_vec(), Some(b"hello".to_vec()))));
    assert!(node.changes(height).contains(&(
        "b".into(),
        b"pushed".to_vec(),
        Some(b"hello".to_vec())
    )));
    assert_eq!(
        node.state()[&("b".to_string(), b"pushed".to_vec())],
        b"hello"
    );
    node.close();
}

#[test]
fn push_update_is_unimplemented_when_off() {
    let node = Node::in_memory("");
    let rt = runtime();
    let address = node.address();
    let status = rt.block_on(async move {
        let mut c = client(&address).await;
        c.push_update(v1::PushUpdateRequest {
            store: "a".into(),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            delete: false,
        })
        .await
        .unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(
        status.message().contains("push_updates"),
        "{}",
        status.message()
    );
    node.close();
}
