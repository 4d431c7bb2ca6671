-- Email pushers (spec: "Push Notifications", kind `email`; as Synapse's
-- EmailPusher): the pusher row holds the address as pushkey and, in
-- `last_stream_ordering`, the newest notification already mailed or passed
-- over (read before its delay ran out). This row holds what only mail needs:
-- the token of the unsubscribe link each mail carries (random, unguessable;
-- it can do nothing but remove this pusher) and when the last mail went out,
-- for the throttle. It goes with its pusher.
create table email_pusher_state (
    user_id           text not null,
    app_id            text not null,
    pushkey           text not null,
    unsubscribe_token text not null,
    last_mail_ts      bigint not null default 0,
    primary key (app_id, pushkey, user_id),
    foreign key (app_id, pushkey, user_id)
        references pushers (app_id, pushkey, user_id) on delete cascade
);
