-- Veilface ciphertext store: MySQL 8 / MariaDB 10.11, InnoDB, utf8mb4.
-- The single source of truth for the schema; veilface/store/models.py mirrors it and
-- tests/test_schema.py checks that the two agree. No table holds an image or a
-- plaintext template: templates exist only as CKKS ciphertexts.
-- `veilface db migrate` runs it (the services hold no DDL right) and grants each service's
-- account its rights on these tables (veilface/store/privileges.py).

CREATE TABLE IF NOT EXISTS galleries (
    id BIGINT NOT NULL AUTO_INCREMENT,
    name VARCHAR(128) NOT NULL,
    projection VARCHAR(64) NULL,           -- compact template projection, NULL = model's own dimension
    key_mode VARCHAR(16) NOT NULL DEFAULT 'deployment',  -- 'deployment', 'gallery' (own key) or 'client'
    key_fingerprint VARCHAR(64) NULL,      -- the gallery's public key set; NULL in deployment mode
    created_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY name (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS subjects (
    id BIGINT NOT NULL AUTO_INCREMENT,
    gallery_id BIGINT NOT NULL,
    name VARCHAR(255) NOT NULL,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_subject_name (gallery_id, name),
    FOREIGN KEY (gallery_id) REFERENCES galleries (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Next free slot of a gallery per model version; slots are never reused.
CREATE TABLE IF NOT EXISTS slot_counters (
    gallery_id BIGINT NOT NULL,
    model_version VARCHAR(64) NOT NULL,
    next_slot BIGINT NOT NULL,
    PRIMARY KEY (gallery_id, model_version),
    FOREIGN KEY (gallery_id) REFERENCES galleries (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One enrolled face. `ciphertext` is its delta ciphertext until compaction folds it
-- into its packed block (state 'packed', ciphertext NULL). A row with no subject is a hidden
-- sentinel (see the `sentinels` table); the matcher's account cannot read `subject_id`.
CREATE TABLE IF NOT EXISTS templates (
    id BIGINT NOT NULL AUTO_INCREMENT,
    gallery_id BIGINT NOT NULL,
    subject_id BIGINT NULL,
    model_version VARCHAR(64) NOT NULL,
    image_sha256 VARCHAR(64) NOT NULL,
    block_no INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    state ENUM('delta','packed') NOT NULL,
    ciphertext LONGBLOB NULL,
    created_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_template_image (gallery_id, subject_id, model_version, image_sha256),
    UNIQUE KEY uq_template_slot (gallery_id, model_version, block_no, slot),
    KEY ix_templates_state (gallery_id, model_version, state),
    FOREIGN KEY (gallery_id) REFERENCES galleries (id) ON DELETE CASCADE,
    FOREIGN KEY (subject_id) REFERENCES subjects (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- A packed block: `dim` diagonal ciphertexts holding up to one template per slot.
CREATE TABLE IF NOT EXISTS blocks (
    id BIGINT NOT NULL AUTO_INCREMENT,
    gallery_id BIGINT NOT NULL,
    model_version VARCHAR(64) NOT NULL,
    block_no INTEGER NOT NULL,
    dim INTEGER NOT NULL,
    version INTEGER NOT NULL,              -- bumped by each compaction; matchers reload on change
    filled INTEGER NOT NULL,
    layout_version INTEGER NOT NULL DEFAULT 1,  -- 1 single-step diagonals, 2 baby-step giant-step
    baby_steps INTEGER NULL,               -- g of a layout-2 block (NULL for layout 1)
    updated_at DATETIME NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_block (gallery_id, model_version, block_no),
    FOREIGN KEY (gallery_id) REFERENCES galleries (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The seed of each sentinel template's random unit vector, sealed with the gateway-only
-- sentinel.key (veilface/store/sentinels.py). Only the gateway's account may read it.
CREATE TABLE IF NOT EXISTS sentinels (
    template_id BIGINT NOT NULL,
    sealed_seed VARBINARY(128) NOT NULL,
    PRIMARY KEY (template_id),
    FOREIGN KEY (template_id) REFERENCES templates (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS block_ciphertexts (
    block_id BIGINT NOT NULL,
    diagonal INTEGER NOT NULL,
    ciphertext LONGBLOB NOT NULL,
    PRIMARY KEY (block_id, diagonal),
    FOREIGN KEY (block_id) REFERENCES blocks (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- API keys are stored as SHA-256 hashes; the key itself is shown once.
CREATE TABLE IF NOT EXISTS api_keys (
    id BIGINT NOT NULL AUTO_INCREMENT,
    name VARCHAR(128) NOT NULL,
    key_hash VARCHAR(64) NOT NULL,
    scope ENUM('admin','read','eval') NOT NULL,
    gallery VARCHAR(128) NULL,             -- set for keys bound to one gallery (CompreFace-style)
    created_at DATETIME NOT NULL,
    revoked_at DATETIME NULL,
    PRIMARY KEY (id),
    UNIQUE KEY key_hash (key_hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Who did what to which gallery; never an image or a template.
CREATE TABLE IF NOT EXISTS audit_log (
    id BIGINT NOT NULL AUTO_INCREMENT,
    at DATETIME NOT NULL,
    api_key_id BIGINT NULL,
    action VARCHAR(32) NOT NULL,
    gallery VARCHAR(128) NULL,
    subject VARCHAR(255) NULL,
    outcome VARCHAR(32) NOT NULL,
    PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Worker heartbeats, read by /readyz and by the shard router.
CREATE TABLE IF NOT EXISTS workers (
    name VARCHAR(191) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    queue VARCHAR(191) NOT NULL,
    model_version VARCHAR(64) NULL,
    key_fingerprint VARCHAR(64) NOT NULL,
    provider VARCHAR(64) NULL,
    started_at DATETIME NOT NULL,
    last_seen DATETIME NOT NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The deployment's key set: the fingerprint of the gateway's CKKS context, which every worker's
-- public context must share. One row, named 'deployment'; the gateway records it at start and key
-- rotation replaces it.
CREATE TABLE IF NOT EXISTS key_sets (
    name VARCHAR(32) NOT NULL,
    fingerprint VARCHAR(64) NOT NULL,
    announced_at DATETIME NOT NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The public key set (public, relinearisation and Galois keys) of a gallery with its own keys or
-- a client's, in ~4 MiB parts: one serialized context is ~16 MB, close to max_allowed_packet.
-- The concatenated parts hash (SHA-256) to `fingerprint`. Workers may only read it.
CREATE TABLE IF NOT EXISTS public_key_set_parts (
    fingerprint VARCHAR(64) NOT NULL,
    part INTEGER NOT NULL,
    data LONGBLOB NOT NULL,
    PRIMARY KEY (fingerprint, part)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
