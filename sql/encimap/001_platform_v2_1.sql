-- The encrypted-mail database as the platform's encrypted-IMAP service created it (schema
-- v2.1), created only where it does not exist yet. Every later migration starts from this
-- shape, so a fresh install and an adopted production database take the same path.

CREATE TABLE IF NOT EXISTS vaultboxes (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL,
    domain VARCHAR(255) NOT NULL,
    name VARCHAR(100) NOT NULL,
    alias VARCHAR(100),
    status VARCHAR(20) DEFAULT 'active',
    limits JSONB DEFAULT '{}',
    smtp_enabled BOOLEAN DEFAULT false,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_vaultboxes_alias ON vaultboxes (alias);
CREATE INDEX IF NOT EXISTS idx_vaultboxes_smtp_enabled ON vaultboxes (smtp_enabled);
CREATE TABLE IF NOT EXISTS vaultbox_smtp_credentials (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    vaultbox_id UUID NOT NULL REFERENCES vaultboxes(id) ON DELETE CASCADE,
    username VARCHAR(255) UNIQUE NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    host VARCHAR(255) DEFAULT 'mail.motorical.com',
    port INTEGER DEFAULT 2587,
    security_type VARCHAR(20) DEFAULT 'STARTTLS',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS imap_app_credentials (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL,
    username VARCHAR(255) NOT NULL,
    vaultbox_id UUID,
    password_hash VARCHAR(255),
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now(),
    revoked_at TIMESTAMP WITH TIME ZONE,
    updated_at TIMESTAMP WITHOUT TIME ZONE DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT imap_app_credentials_username_key UNIQUE (username)
);
CREATE INDEX IF NOT EXISTS idx_imap_app_credentials_vaultbox_id ON imap_app_credentials (vaultbox_id);
CREATE TABLE IF NOT EXISTS certificates (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    vaultbox_id UUID NOT NULL REFERENCES vaultboxes(id) ON DELETE CASCADE,
    certificate_type VARCHAR(20) NOT NULL,
    pem_content TEXT NOT NULL,
    friendly_name VARCHAR(255),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE IF NOT EXISTS encrypted_emails (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    vaultbox_id UUID NOT NULL REFERENCES vaultboxes(id) ON DELETE CASCADE,
    message_id VARCHAR(255) NOT NULL,
    sender VARCHAR(255) NOT NULL,
    recipient VARCHAR(255) NOT NULL,
    subject_encrypted TEXT,
    body_encrypted TEXT,
    encryption_method VARCHAR(50) DEFAULT 'S/MIME',
    processed_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
