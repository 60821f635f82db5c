//! pushbridge: signed webhooks in, personalized APNs/FCM notifications out.
