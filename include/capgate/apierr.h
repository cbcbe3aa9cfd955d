/* apierr.h: the v2 API's error table (code, codeDesc, default message), shared by both programs. */
#ifndef CAPGATE_APIERR_H
#define CAPGATE_APIERR_H

enum apierr_code {
    APIERR_OK = 0,
    APIERR_INVALID_PARAMETER = 4000, /* InvalidParameter */
    APIERR_AUTH_FAILURE = 4100,      /* AuthFailure (also unknown SecretId, bad signature) */
    APIERR_ACCESS_DENIED = 4300,     /* AccessDenied */
    APIERR_LIMIT_EXCEEDED = 4400,    /* LimitExceeded */
    APIERR_REPLAY = 4500,            /* ReplayAttack: repeated Nonce or Timestamp outside window */
    APIERR_HTTPS_REQUIRED = 4600,    /* HttpsRequired */
    APIERR_NOT_FOUND = 5000,         /* ResourceNotFound */
    APIERR_OPERATION_FAILED = 5100,  /* OperationFailed (and CaptchaCheck "verification failed") */
    APIERR_PURCHASE_FAILED = 5200,   /* PurchaseFailed */
    APIERR_INSUFFICIENT_BALANCE = 5300, /* InsufficientBalance */
    APIERR_PARTIAL_SUCCESS = 5400,      /* PartialSuccess */
    APIERR_QUALIFICATION = 5500,        /* QualificationRejected */
    APIERR_INTERNAL = 6000,             /* InternalError */
    APIERR_VERSION = 6100,    /* VersionNotSupported: also an Action that is not supported */
    APIERR_UNAVAILABLE = 6200 /* ServiceUnavailable */
};

/* codeDesc for a code ("Success" for 0), or NULL when the code is not in the table. The table
 * holds every code of the docs' error code page, the CAM failures 4101-4106 and 4110 and the
 * purchase codes 5200-5500 included. */
const char *apierr_desc(int code);
/* The default English message for a code ("No Error" for 0), or NULL when unknown. */
const char *apierr_message(int code);
/* 1 when the code is in the table. */
int apierr_known(int code);

#endif
